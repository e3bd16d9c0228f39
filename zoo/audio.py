"""Audio front end: Whisper's log-mel spectrogram on torch/torchaudio.

The recipe (openai/whisper audio.py, transformers' WhisperFeatureExtractor) and the trap at each
step:

1. pad with zeros or trim to 30 s (480,000 samples at 16 kHz): the encoder's position table
   covers exactly 3,000 frames;
2. STFT with n_fft 400, hop 160, a *periodic* Hann window (``torch.hann_window``'s default;
   a symmetric one shifts every bin slightly), centred with reflection padding;
3. power spectrum |X|^2 with the *last frame dropped*: centring gives 3,001 frames, Whisper
   keeps 3,000;
4. mel filters on the *Slaney* scale with *Slaney* area normalisation; torchaudio's defaults are
   the HTK scale and no normalisation, which gives visibly different features;
5. log10 with a 1e-10 floor, then clamp from below at (max - 8), the max taken over the *whole
   clip* (all bins and frames of one example, not per frame or per bin), then (x + 4) / 4.
"""

import functools

import numpy as np
import torch
import torchaudio

SAMPLING_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLING_RATE  # 480,000 samples in a 30 s chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3,000 frames: the encoder's input length


@functools.cache
def mel_filters(n_mels: int, sampling_rate: int = SAMPLING_RATE, n_fft: int = N_FFT) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filters, (n_fft // 2 + 1, n_mels), 0 Hz to Nyquist."""
    return torchaudio.functional.melscale_fbanks(
        n_freqs=n_fft // 2 + 1,
        f_min=0.0,
        f_max=sampling_rate / 2,
        n_mels=n_mels,
        sample_rate=sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    )


def pad_or_trim(waveform: torch.Tensor, length: int = N_SAMPLES) -> torch.Tensor:
    """Zero-pad or cut the last dimension to ``length`` samples."""
    n = waveform.shape[-1]
    if n > length:
        return waveform[..., :length]
    return torch.nn.functional.pad(waveform, (0, length - n))


def log_mel_spectrogram(
    waveform: torch.Tensor | np.ndarray,
    sampling_rate: int = SAMPLING_RATE,
    n_mels: int = 80,
    resample: bool = True,
    seconds: float = CHUNK_SECONDS,
) -> torch.Tensor:
    """Whisper's input features from raw audio.

    Args:
        waveform: mono samples in [-1, 1], (samples,) or a batch (B, samples); a numpy array or
            a tensor. Longer than 30 s is cut, shorter is zero-padded.
        sampling_rate: the rate of ``waveform``. Whisper was trained on 16 kHz; other rates are
            resampled with torchaudio (band-limited sinc) unless ``resample`` is False.
        n_mels: 80 (Whisper up to large-v2) or 128 (large-v3).
        resample: False refuses a rate other than 16 kHz instead of resampling.
        seconds: the window audio is padded or trimmed to; Whisper's is 30 s. A shorter window
            gives exactly the first frames of the 30 s features for a clip that fits in it (the
            padding is zeros, which sit at the floor and never set the max), at a fraction of
            the cost: for fine-tuning on short clips (``WhisperEncoder`` reads fewer frames).

    Returns:
        float32 (n_mels, 3000) for a 1-D input, (B, n_mels, 3000) for a batch (3000 frames:
        ``seconds`` * 100 for another window).
    """
    x = torch.as_tensor(waveform)
    if x.dim() not in (1, 2):
        raise ValueError(f"waveform: expected (samples,) or (batch, samples), got shape {tuple(x.shape)}")
    if x.shape[-1] == 0:
        raise ValueError("waveform: no samples")
    if not (x.is_floating_point()):
        raise ValueError(f"waveform: expected float samples in [-1, 1], got dtype {x.dtype}")
    if not isinstance(n_mels, int) or n_mels < 1:
        raise ValueError(f"n_mels: must be a positive integer, got {n_mels!r}")
    n_samples = round(seconds * SAMPLING_RATE)
    if n_samples < N_FFT:
        raise ValueError(f"seconds: the window must hold at least one {N_FFT}-sample frame, got {seconds}")
    x = x.float()
    if sampling_rate != SAMPLING_RATE:
        if not resample:
            raise ValueError(
                f"sampling_rate: Whisper's features are defined at {SAMPLING_RATE} Hz, got {sampling_rate} Hz; "
                "pass resample=True or resample the audio first"
            )
        if not isinstance(sampling_rate, int) or sampling_rate < 1:
            raise ValueError(f"sampling_rate: must be a positive integer in Hz, got {sampling_rate!r}")
        x = torchaudio.functional.resample(x, sampling_rate, SAMPLING_RATE)
    x = pad_or_trim(x, n_samples)
    window = torch.hann_window(N_FFT, periodic=True, device=x.device)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = stft[..., :-1].abs() ** 2  # (..., n_fft // 2 + 1, 3000): the 3,001st frame dropped
    mel = mel_filters(n_mels).to(x.device).T @ power  # (..., n_mels, 3000)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)  # one max per clip, over all bins and frames
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0
