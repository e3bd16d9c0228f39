"""Whisper encoder parity with transformers, both directions, on tiny random non-square models:
WhisperModel, WhisperForConditionalGeneration (decoders listed and not used) and
WhisperForAudioClassification. 20 mel bins, d_model 48, d_ff 104, 24 positions (48 frames)."""

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import zoo
from tests.conftest import randomize_
from zoo.cli import main
from zoo.config import ConfigError
from zoo.convert import ConversionError, rename
from zoo.families.whisper import convert as whisper_convert
from zoo.parity import run_parity

HF_CONFIG = dict(vocab_size=67, num_mel_bins=20, d_model=48, encoder_layers=2, encoder_attention_heads=4,
                 encoder_ffn_dim=104, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=56,
                 max_source_positions=24, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 decoder_start_token_id=3, classifier_proj_size=20, num_labels=5)  # fmt: skip


def save_hf(cls, path, **overrides):
    model = randomize_(cls(transformers.WhisperConfig(**(HF_CONFIG | overrides))))
    model.save_pretrained(path)
    return model


def features(B=2, seed=0):
    return 0.5 * torch.randn(B, 20, 48, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("cls", "task"),
    [
        (transformers.WhisperModel, "base"),
        (transformers.WhisperForConditionalGeneration, "base"),
        (transformers.WhisperForAudioClassification, "audio_classification"),
    ],
)
def test_transformers_parity_both_directions(tmp_path, cls, task):
    save_hf(cls, tmp_path)
    with pytest.warns(UserWarning, match="decoder") if task == "base" else _no_warning():
        report = run_parity(tmp_path, dtypes=("float32",))
    assert report.ok, report.table()
    assert report.task == task
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    expected = {"last_hidden_state", "logits"} if task == "audio_classification" else {"last_hidden_state"}
    assert {r.output for r in report.rows} == expected


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", UserWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_outputs_equal_the_reference_encoder_and_head(tmp_path):
    ref = save_hf(transformers.WhisperForAudioClassification, tmp_path)
    model = zoo.from_pretrained(tmp_path)
    x = features()
    with torch.no_grad():
        out, expected = model(input_features=x), ref(x)
        hidden = ref.encoder(x).last_hidden_state
    assert out.last_hidden_state.shape == (2, 24, 48)
    torch.testing.assert_close(out.last_hidden_state, hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)
    labels = torch.tensor([1, 4])
    torch.testing.assert_close(model(x, labels=labels).loss, ref(x, labels=labels).loss, atol=1e-6, rtol=0)


def test_a_wrong_mapping_fails_parity(tmp_path, monkeypatch):
    save_hf(transformers.WhisperModel, tmp_path)
    original = whisper_convert.rules

    def swapped(config, task):  # queries and values have the same shape: only the outputs can tell
        out = []
        for r in original(config, task):
            if r.src[0] == "encoder.layers.{i}.self_attn.q_proj.weight":
                r = rename(r.src[0], "layers.{i}.attn.v_proj.weight")
            elif r.src[0] == "encoder.layers.{i}.self_attn.v_proj.weight":
                r = rename(r.src[0], "layers.{i}.attn.q_proj.weight")
            out.append(r)
        return out

    monkeypatch.setattr(zoo.registry.get_family("whisper"), "rules", swapped)
    with pytest.warns(UserWarning):
        report = run_parity(tmp_path, dtypes=("float32",), roundtrip=False)
    assert not report.ok


def test_decoder_keys_outside_the_ignore_list_still_fail(tmp_path):
    save_hf(transformers.WhisperForConditionalGeneration, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["model.decoder.layers.0.adapter.weight"] = torch.zeros(3, 4)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning), pytest.raises(ConversionError, match=r"model.decoder.layers.0.adapter.weight"):
        zoo.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"activation_dropout": 0.1}, "^activation_dropout: 0.1 has no equivalent"),
        ({"use_weighted_layer_sum": True}, "^use_weighted_layer_sum: True is not supported"),
        ({"encoder_layerdrop": 0.1}, "^encoder_layerdrop: 0.1"),
        ({"activation_function": "tanh"}, "^activation_function: Whisper checkpoint uses 'tanh'"),
    ],
)
def test_unsupported_switches_are_refused(overrides, message):
    hf = transformers.WhisperConfig(**(HF_CONFIG | overrides)).to_dict()
    with pytest.raises(ConfigError, match=message):
        whisper_convert.config_from_hf(hf)


def test_input_checks_and_short_inputs():
    model = randomize_(zoo.create_model("whisper-test-tiny"))
    with pytest.raises(ValueError, match=r"input_features: expected \(batch, n_mels=20, frames <= 48\)"):
        model(input_features=torch.zeros(1, 20, 50))
    with pytest.raises(ValueError, match="labels: the base Whisper encoder has no head"):
        model(input_features=features(), labels=torch.tensor([0, 1]))
    # A short clip runs on the first positions of the table (ceil(T / 2) of them).
    assert model(input_features=features()[..., :15]).last_hidden_state.shape == (2, 8, 48)


def test_cli_parity_info_list(tmp_path, capsys):
    save_hf(transformers.WhisperModel, tmp_path)
    with pytest.warns(UserWarning):
        assert main(["parity", str(tmp_path), "--dtype", "float32"]) == 0
    assert "parity: ok" in capsys.readouterr().out
    assert main(["info", "whisper-tiny"]) == 0
    info = capsys.readouterr().out
    assert "whisper-tiny (family whisper)" in info and "layers.0.attn.q_proj.bias" in info
    assert "layers.0.attn.k_proj.bias" not in info
    assert main(["list", "whisper*"]) == 0
    listed = capsys.readouterr().out.split("\n")
    names = {line.split()[0] for line in listed if line}
    assert {"whisper-tiny", "whisper-tiny.en", "whisper-base", "whisper-small", "whisper-medium",
            "whisper-large-v3"} <= names  # fmt: skip
