"""The set-up check the suite runs before collecting anything (see tests/conftest.py).

A broken environment (a torchaudio built for another torch, a missing package, a `.venv` that no
longer matches requirements.lock) would otherwise surface as dozens of collection errors from
whichever test module happens to import it first. `problems()` finds each of them once and says
what to do; `pytest_sessionstart` stops the run with that one message.
"""

import importlib
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
# Distributions whose import name is not their name with "-" turned into "_".
IMPORT_NAMES = {
    "pyyaml": "yaml",
    "scikit-learn": "sklearn",
    "scikit-image": "skimage",
    "open-clip-torch": "open_clip",
    "open_clip_torch": "open_clip",
}
FIX = "rebuild the environment from the lock: `rm -rf .venv && make test`"


def declared_requirements(pyproject: Path = ROOT / "pyproject.toml", extras: Iterable[str] = ("test",)) -> list[str]:
    """The distributions pyproject.toml asks for: the runtime dependencies and the given extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return [Requirement(r).name for r in reqs]


def import_name(dist: str) -> str:
    return IMPORT_NAMES.get(dist.lower(), dist.replace("-", "_").lower())


def import_problems(dists: Iterable[str], importer: Callable[[str], object] = importlib.import_module) -> list[str]:
    """One line per distribution whose module does not import, with the error it raised."""
    found = []
    for dist in dists:
        module = import_name(dist)
        try:
            importer(module)
        except Exception as e:  # any failure (OSError from a bad .so included) is the finding
            found.append(f"{dist}: `import {module}` fails: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    return found


def _public(version: str) -> Version:
    return Version(version.split("+")[0])


def torch_stack_problems(versions: dict[str, str], torchvision_requires: Iterable[str] = ()) -> list[str]:
    """torch, torchaudio and torchvision must be one build.

    torchaudio declares no dependency on torch, so pip happily pairs torch 2.11.0 with a
    torchaudio 2.11.1 built against a newer torch, which then fails to load its library
    (``undefined symbol``). Since 2.1 their versions move together, so they must be equal, local
    build tag (``+cu130``, ``+cpu``) included. torchvision states the torch it needs.
    """
    found = []
    torch_v = versions.get("torch")
    if torch_v is None:
        return ["torch is not installed"]
    audio_v = versions.get("torchaudio")
    same_build = audio_v is not None and audio_v.partition("+")[2] == torch_v.partition("+")[2]
    if audio_v is not None and (_public(audio_v) != _public(torch_v) or not same_build):
        found.append(
            f"torchaudio {audio_v} does not match torch {torch_v}: torchaudio declares no torch dependency, "
            f"so pip can pair them wrongly; they must be the same release and build (torchaudio=={_public(torch_v)})"
        )
    for line in torchvision_requires:
        req = Requirement(line)
        if req.name == "torch" and not req.marker and _public(torch_v) not in req.specifier:
            found.append(
                f"torchvision {versions.get('torchvision')} needs torch{req.specifier}, but torch is {torch_v}"
            )
    return found


def lock_pins(lock: Path) -> dict[str, str]:
    """name -> version for every pin in a uv/pip-compile lock that applies to this interpreter."""
    pins = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if m and (m.group(3) is None or Marker(m.group(3)).evaluate()):
            pins[m.group(1).lower()] = m.group(2)
    return pins


def lock_problems(lock: Path, installed: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """One line per locked package whose installed version differs from its pin (or is missing)."""
    found = []
    for name, pinned in sorted(lock_pins(lock).items()):
        try:
            have = installed(name)
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name}: requirements.lock pins {pinned}, not installed")
            continue
        if _public(have) != _public(pinned):
            found.append(f"{name}: requirements.lock pins {pinned}, installed {have}")
    return found


def in_project_venv() -> bool:
    """True when running in this checkout's .venv, the environment `make` builds from the lock."""
    return Path(sys.prefix).resolve() == (ROOT / ".venv").resolve()


def problems() -> list[str]:
    """Everything wrong with this environment for running zoo's tests; empty when it is sound."""
    dists = declared_requirements()
    found = import_problems(dists)
    versions = {}
    for dist in ("torch", "torchaudio", "torchvision"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    vision_requires = (importlib.metadata.requires("torchvision") or []) if "torchvision" in versions else []
    found += torch_stack_problems(versions, vision_requires)
    if in_project_venv() and LOCK.exists():
        found += lock_problems(LOCK)
    return found
