"""Studies: controlled experiments run by `zoo study NAME [key=value ...] --out DIR`.

A study is one module here that registers a settings dataclass (its defaults are the documented
run; every field can be overridden with ``key=value``) and a function that runs it::

    @dataclass
    class Settings:
        steps: int = 100

    @register("name", "one line for `zoo study --help`", Settings)
    def run(settings: Settings, out_dir: Path, log) -> dict:
        ...  # write CSVs and plots into out_dir; return the summary

``run_study`` checks the overrides (an unknown key or a value of the wrong type is an error that
names the key), runs the study, and writes ``summary.json``: the study's name, its settings and
what its function returned.
"""

import dataclasses
import difflib
import importlib
import json
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The recipes' typed key=value parsing: YAML values, checked against the dataclass's annotations.
from zoo.train.config import RecipeError, parse_overrides
from zoo.train.config import _build as build_settings


class StudyError(ValueError):
    """A study name or setting is wrong; the message starts with what is wrong."""


@dataclass(frozen=True)
class Study:
    name: str
    help: str
    settings: type
    run: Callable[..., dict]


STUDIES: dict[str, Study] = {}


def register(name: str, help: str, settings: type) -> Callable:
    """Register ``run(settings, out_dir, log) -> summary dict`` as study ``name``."""

    def wrap(run: Callable[..., dict]) -> Callable[..., dict]:
        if name in STUDIES:
            raise ValueError(f"study {name!r} is registered twice")
        STUDIES[name] = Study(name, help, settings, run)
        return run

    return wrap


def _load_studies() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def list_studies() -> list[str]:
    _load_studies()
    return sorted(STUDIES)


def get_study(name: str) -> Study:
    _load_studies()
    if name not in STUDIES:
        close = difflib.get_close_matches(name, STUDIES, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise StudyError(f"study: unknown study {name!r}{hint}; studies: {', '.join(sorted(STUDIES))}")
    return STUDIES[name]


def study_settings(name: str, overrides: list[str] | None = None):
    """The settings of study ``name``: its defaults with ``key=value`` overrides applied and checked."""
    study = get_study(name)
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise StudyError(f"{item}: settings are key=value, e.g. shots=[0,1,2] (study {name})")
    try:
        return build_settings(study.settings, dict(parse_overrides(overrides or [])), "")
    except RecipeError as err:
        raise StudyError(f"{err} (study {name})") from err


def run_study(name: str, overrides: list[str] | None = None, out_dir: str | Path | None = None, log=print) -> dict:
    """Run study ``name`` into ``out_dir`` (default ``runs/study/NAME``); returns the summary it wrote."""
    study = get_study(name)
    settings = study_settings(name, overrides)
    out = Path(out_dir) if out_dir is not None else Path("runs/study") / name
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = study.run(settings, out, log)
    summary = {"study": name, "settings": dataclasses.asdict(settings), **result}
    # Wall time, and the CPU time of this process (all its threads): on a shared machine the
    # second says what the run costs.
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"zoo study {name}: wrote {out}/summary.json ({summary['seconds']} s, {summary['cpu_seconds']} s of CPU)")
    return summary


__all__ = ["STUDIES", "Study", "StudyError", "get_study", "list_studies", "register", "run_study", "study_settings"]
