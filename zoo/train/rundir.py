"""The run directory: zoo's marker in it, and the lock that lets one run at a time write there.

A run directory carries a ``.zoo-run`` marker from the moment zoo first writes into it. zoo
removes files (``train.resume=false``, old checkpoints) only in a directory with that marker, and
only the files it writes itself; a directory that exists, is not empty and has no marker is
refused before anything is written.

While a run writes, it holds an exclusive ``flock`` on ``.zoo-run.lock``; the file records who
holds it (pid, host, start time, command). A second run into the same directory fails at once,
naming the first. The kernel drops the lock when the process ends, however it ends (``kill -9``
included), so a crashed run never leaves a stale lock behind.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

MARKER = ".zoo-run"
LOCK = ".zoo-run.lock"


class RunDirError(ValueError):
    """The run directory cannot be used: not zoo's, or in use by another run."""


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def claim(run_dir: str | Path) -> Path:
    """Make ``run_dir`` a zoo run directory (creating it), or refuse one that holds other files."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"out_dir: {run_dir} is a file, not a directory")
    if is_run_dir(run_dir):
        return run_dir
    if run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir()):
        older = (run_dir / "recipe.yaml").is_file() or any(run_dir.glob("checkpoints/step-*/trainer.json"))
        hint = (
            f"; if it is a run of a zoo from before run markers, `touch {run_dir / MARKER}` adopts it" if older else ""
        )
        raise RunDirError(
            f"out_dir: {run_dir} is not empty and is not a zoo run directory (no {MARKER} marker in it); "
            f"zoo writes and deletes only in its own run directories. Choose a new or empty out_dir{hint}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    (run_dir / MARKER).write_text(json.dumps({"created": started, "by": "zoo"}) + "\n")
    return run_dir


# Locks this process holds: run directory -> (file descriptor, how many times taken). flock locks
# belong to an open file, so taking the same lock twice in one process must reuse the descriptor.
_HELD: dict[Path, list[int]] = {}


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


@contextlib.contextmanager
def locked(run_dir: str | Path):
    """Hold the run directory's lock for the block; RunDirError naming the holder if another has it."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        _HELD[key][1] += 1
    else:
        fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            who = ", ".join(f"{k} {v}" for k, v in holder.items()) or "a process that has not written its name yet"
            raise RunDirError(
                f"out_dir: {run_dir} is in use by another zoo run ({who}); wait for it to end or choose another out_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
        _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            fd = _HELD.pop(key)[0]
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock
