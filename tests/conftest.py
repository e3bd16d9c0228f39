"""Shared test helpers: random non-default weights, tiny reference checkpoints on disk."""

import contextlib
import resource
import signal

import pytest
import torch

from tests import environment

torch.set_num_threads(2)


def pytest_sessionstart(session):
    """Stop at once, with one message, when the environment itself is broken (see tests/environment.py)."""
    found = environment.problems()
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        pytest.exit(f"zoo's test environment is broken:\n{lines}\nFix: {environment.FIX}", returncode=3)


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter random values: weights N(0, std), norm scales 1 + N(0, 0.1).

    Norm scales stay near 1 (near 0 would hide whole layers), and biases are non-zero, so a
    wrong mapping of any tensor changes the outputs.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
            is_norm_scale = (
                p.dim() == 1
                and any(k in name.lower() for k in ("norm", "ln", "layer_norm"))
                and (name.endswith("weight") or name.endswith("scale"))
            )
            p.copy_(1 + 0.1 * noise if is_norm_scale else std * noise)
    return module.eval()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: a second thread costs more to wake (and, on a
    shared machine, to get scheduled) than it saves. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_parity_tool_and_strict_export(checkpoint_dir, reference_cls, tmp_path) -> None:
    """``zoo parity`` on a reference checkpoint passes both directions (fp32 and bf16), and zoo's
    export loads into ``reference_cls`` with no missing, unexpected or mismatched keys."""
    import zoo
    from zoo.parity import run_parity

    report = run_parity(checkpoint_dir, dtypes=("float32", "bfloat16"))
    assert report.ok, report.table()
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    zoo.from_pretrained(checkpoint_dir).save_pretrained(tmp_path)
    _, info = reference_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


def swap_decoder_queries(rules: list) -> list:
    """A wrong mapping on purpose, for encoder-decoder parity tests: the decoder's self- and
    cross-attention query projections swapped (fairseq names; the same shapes, so only the values
    can tell), which a parity check must catch."""
    names = {"self_attn.q_proj": "encoder_attn.q_proj", "encoder_attn.q_proj": "self_attn.q_proj"}
    out = []
    for rule in rules:
        src = rule.src[0]
        for a, b in names.items():
            if f".{a}." in src:
                src = src.replace(f".{a}.", f".{b}.")
                break
        out.append(type(rule)((src,), rule.dst, rule.fn, rule.inv))
    return out


def tiny_test_variants() -> list[str]:
    """The registry's tiny test configs: ``*-tiny`` names that cite no public source URL (a public
    model may also end in -tiny: openai's whisper-tiny is full size, and cites its config.json)."""
    import zoo

    return [n for n in zoo.list_models("*-tiny") if "://" not in zoo.get_variant(n).source]


@pytest.fixture
def tmp_ckpt(tmp_path):
    """A fresh directory for a checkpoint."""
    return tmp_path / "ckpt"


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Make every file write in this process fail past ``nbytes`` (RLIMIT_FSIZE: the kernel
    refuses the write with EFBIG), the way a full disk fails a write half way: the real error
    from the real writer, safetensors' own SafetensorError included, with nothing mocked."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)
