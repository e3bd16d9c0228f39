"""The set-up smoke test: the environment check passes here and catches each kind of breakage."""

import importlib.metadata

import pytest

from tests import environment


def test_this_environment_is_sound():
    assert environment.problems() == []


def test_every_declared_dependency_is_checked():
    dists = environment.declared_requirements()
    for needed in ("torch", "torchaudio", "torchvision", "timm", "transformers", "datasets", "tokenizers"):
        assert needed in dists
    assert {"safetensors", "gguf", "ctranslate2", "open_clip_torch"} <= set(dists)
    assert environment.import_name("pyyaml") == "yaml"
    assert environment.import_name("open_clip_torch") == "open_clip"


def test_torchaudio_from_a_newer_torch_is_named():
    # The breakage that stopped CI: torch 2.11.0 beside torchaudio 2.11.1.
    found = environment.torch_stack_problems({"torch": "2.11.0+cu130", "torchaudio": "2.11.1", "torchvision": "0.26.0"})
    assert len(found) == 1 and "torchaudio 2.11.1 does not match torch 2.11.0+cu130" in found[0]
    # Same release but another build (CPU torchaudio beside a CUDA torch) is a mismatch too.
    assert environment.torch_stack_problems({"torch": "2.11.0+cu130", "torchaudio": "2.11.0+cpu"})
    assert environment.torch_stack_problems({"torch": "2.11.0+cu130", "torchaudio": "2.11.0+cu130"}) == []


def test_torchvision_for_another_torch_is_named():
    found = environment.torch_stack_problems(
        {"torch": "2.11.0", "torchvision": "0.29.0"}, torchvision_requires=["numpy", "torch (==2.14.0)"]
    )
    assert found == ["torchvision 0.29.0 needs torch==2.14.0, but torch is 2.11.0"]


def test_import_failure_names_the_distribution():
    def importer(name):
        if name == "torchaudio":
            raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")
        return object()

    found = environment.import_problems(["torch", "torchaudio"], importer=importer)
    assert found == [
        "torchaudio: `import torchaudio` fails: OSError: libtorchaudio.so: undefined symbol: "
        "torch_exception_get_what_without_backtrace"
    ]


def test_lock_drift_is_named(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# generated\n"
        "numpy==1.0.0 ; python_full_version < '3.0' \\\n    --hash=sha256:00\n"  # not this interpreter: ignored
        "torch==2.11.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
        "tqdm==4.0.0 \\\n    --hash=sha256:cc\n"
        "not-a-package==1.0 \\\n    --hash=sha256:dd\n"
        "    # via zoo\n"
    )
    assert environment.lock_pins(lock) == {"torch": "2.11.0", "tqdm": "4.0.0", "not-a-package": "1.0"}
    installed = {"torch": "2.11.0+cu130", "tqdm": "4.70.1"}

    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    assert environment.lock_problems(lock, installed=version) == [
        "not-a-package: requirements.lock pins 1.0, not installed",
        "tqdm: requirements.lock pins 4.0.0, installed 4.70.1",
    ]


@pytest.mark.skipif(not environment.in_project_venv(), reason="only the project's .venv is built from the lock")
def test_project_venv_matches_the_lock():
    assert environment.LOCK.exists(), "requirements.lock is missing: run `make lock`"
    assert environment.lock_problems(environment.LOCK) == []
