"""zoo.audio.log_mel_spectrogram against transformers' WhisperFeatureExtractor, and its traps."""

import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from zoo.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, mel_filters

CLIPS = Path(__file__).parents[2] / "recipes" / "data" / "speech_digits" / "test"


def real_speech(digit: int) -> np.ndarray:
    """A real human recording (Asterisk's digits, 8 kHz), resampled to 16 kHz."""
    with wave.open(str(CLIPS / f"{digit}.wav")) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
        rate = w.getframerate()
    return torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy()


def synthetic(seconds: float, seed: int) -> np.ndarray:
    """A chirp with noise and a silent gap: tonal, broadband and floor-clamped frames."""
    g = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    x = 0.4 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.02 * g.standard_normal(t.size)
    x[len(x) // 3 : len(x) // 2] = 0.0
    return x.astype(np.float32)


SIGNALS = {"speech": lambda: real_speech(7), "synthetic": lambda: synthetic(7.3, 0), "long": lambda: synthetic(31, 1)}


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("signal", list(SIGNALS))
def test_matches_whisper_feature_extractor(n_mels, signal):
    x = SIGNALS[signal]()
    ref = WhisperFeatureExtractor(feature_size=n_mels)(x, sampling_rate=16000, return_tensors="pt").input_features[0]
    ours = log_mel_spectrogram(x, n_mels=n_mels)
    assert ours.shape == (n_mels, N_FRAMES) == ref.shape
    assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("n_mels", [80, 128])
def test_batch_matches_the_extractor_row_by_row(n_mels):
    a, b = real_speech(3), 0.01 * synthetic(2.0, 2)  # a loud and a quiet clip: each keeps its own max
    n = max(len(a), len(b))
    batch = np.stack([np.pad(a, (0, n - len(a))), np.pad(b, (0, n - len(b)))])
    ref = WhisperFeatureExtractor(feature_size=n_mels)([a, b], sampling_rate=16000, return_tensors="pt")
    ours = log_mel_spectrogram(torch.from_numpy(batch), n_mels=n_mels)
    assert ours.shape == (2, n_mels, N_FRAMES)
    assert (ours - ref.input_features).abs().max() < 1e-4
    assert torch.equal(ours[1], log_mel_spectrogram(batch[1], n_mels=n_mels))


def test_trap_slaney_filters_not_torchaudios_htk_default():
    ours = mel_filters(80)  # (201, 80)
    reference = mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    assert np.abs(ours.numpy() - reference).max() < 1e-6
    htk = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, 80, 16000)  # torchaudio's defaults
    assert (htk - ours).abs().max() > 0.5  # a different filter bank, not a rounding difference


def test_trap_the_last_frame_is_dropped_not_the_first():
    x = np.zeros(N_SAMPLES, dtype=np.float32)
    x[:80] = 1.0  # a click at the very start: only the first frames see it
    feats = log_mel_spectrogram(x)
    assert feats.shape[-1] == N_FRAMES  # centred STFT gives 3,001 frames
    assert feats[:, 0].mean() > feats[:, 10].mean() + 1.0


def test_trap_the_floor_is_max_minus_8_over_the_whole_clip():
    x = synthetic(4.0, 3)  # loud chirp, silent gap, then 26 s of zero padding
    feats = log_mel_spectrogram(x)
    top = feats.max()
    # log10 range clamped to 8, then / 4: every floored value is top - 2, in every bin and frame
    assert torch.isclose(feats.min(), top - 2.0, atol=1e-6)
    # The zero padding sits at the clip's floor in every bin; a per-frame max would leave it at
    # log10(1e-10) -> -1.5, a per-bin max at a different floor in each bin.
    padding = feats[:, 500:]
    assert torch.allclose(padding, torch.full_like(padding, float(top) - 2.0), atol=1e-6)
    assert abs(float(top) - 2.0 - (-1.5)) > 0.5


def test_other_rates_are_resampled_or_refused():
    with wave.open(str(CLIPS / "4.wav")) as w:
        x8k = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    resampled = torchaudio.functional.resample(torch.from_numpy(x8k), 8000, 16000)
    assert torch.equal(log_mel_spectrogram(x8k, sampling_rate=8000), log_mel_spectrogram(resampled))
    with pytest.raises(ValueError, match="sampling_rate: Whisper's features are defined at 16000 Hz, got 8000"):
        log_mel_spectrogram(x8k, sampling_rate=8000, resample=False)


@pytest.mark.parametrize(
    ("waveform", "message"),
    [
        (torch.zeros(1, 2, 100), r"waveform: expected \(samples,\) or \(batch, samples\)"),
        (torch.zeros(100, dtype=torch.int16), "waveform: expected float samples"),
        (torch.zeros(0), "waveform: no samples"),
    ],
)
def test_bad_input_names_the_argument(waveform, message):
    with pytest.raises(ValueError, match=message):
        log_mel_spectrogram(waveform)


def test_a_short_window_gives_the_first_frames_of_the_30_s_features():
    x = real_speech(2)  # 0.75 s: fits in a 1 s window
    torch.testing.assert_close(log_mel_spectrogram(x, seconds=1.0), log_mel_spectrogram(x)[:, :100], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="seconds: the window must hold at least one 400-sample frame"):
        log_mel_spectrogram(x, seconds=0.01)
