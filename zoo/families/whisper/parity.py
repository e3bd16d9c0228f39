"""Whisper's hooks for ``zoo parity``: transformers for its directories, ctranslate2 for CTranslate2's."""

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoo.audio import SAMPLING_RATE, log_mel_spectrogram
from zoo.hub import directory_format
from zoo.parity import ParitySpec, strict_transformers_loader


class CT2Reference:
    """ctranslate2's own Whisper on a CTranslate2 directory, computing in float32 on the CPU.

    It is no torch module: ``to``/``float`` keep it as it is, so the bfloat16 row of a parity
    report compares zoo in bfloat16 with this float32 reference (within the bfloat16 tolerance).
    """

    def __init__(self, path: Path):
        import ctranslate2

        self.model = ctranslate2.models.Whisper(str(path), device="cpu", compute_type="float32")

    def to(self, *args, **kwargs) -> "CT2Reference":
        return self

    def float(self) -> "CT2Reference":
        return self

    def encode(self, input_features: torch.Tensor) -> torch.Tensor:
        import ctranslate2

        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(input_features.float().numpy()))
        return torch.from_numpy(np.array(self.model.encode(features, to_cpu=True)))


def _load_encoder(path: Path) -> nn.Module:
    """transformers' bare WhisperEncoder (what zoo exports for the base task), loaded strictly."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    model, info = WhisperEncoder.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise ValueError(f"parity: transformers did not load {path} strictly: {problems}")
    return model.eval()


def load_reference(path, task: str):
    path = Path(path)
    if directory_format(path) == "ct2":
        return CT2Reference(path)
    archs = json.loads((path / "config.json").read_text()).get("architectures") or ["WhisperModel"]
    if archs[0] == "WhisperEncoder":
        return _load_encoder(path)
    return strict_transformers_loader(archs[0])(path, task)


def make_inputs(model: nn.Module, generator: torch.Generator) -> dict:
    """Two 2-second synthetic clips (amplitude-modulated tones and noise, a different mix each)
    through Whisper's front end, zero-padded to 30 s as real clips are; the model's first n_frames.

    Features as the encoder sees them: random numbers in their place drive the real weights
    into a regime no audio reaches (their fp32 and bf16 errors grow tenfold)."""
    c = model.config
    t = torch.arange(2 * SAMPLING_RATE) / SAMPLING_RATE
    clips = []
    for _ in range(2):
        freqs = 100 + 3000 * torch.rand(5, 1, generator=generator)  # (5, 1) Hz
        tones = (0.1 * torch.sin(2 * torch.pi * freqs * t)).sum(0) * (1 + torch.sin(2 * torch.pi * 3 * t)) / 2
        clips.append(tones + 0.02 * torch.randn(t.shape, generator=generator))
    features = log_mel_spectrogram(torch.stack(clips), n_mels=c.n_mels)  # (2, n_mels, 3000)
    return {"input_features": features[..., : c.n_frames].contiguous()}


def run_zoo(model: nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    out = model(**inputs)
    names = ("last_hidden_state", "logits")
    return {n: getattr(out, n) for n in names if getattr(out, n) is not None}


def run_reference(model, inputs: dict) -> dict[str, torch.Tensor]:
    features = inputs["input_features"]
    if isinstance(model, CT2Reference):
        return {"last_hidden_state": model.encode(features)}
    features = features.to(next(model.parameters()).dtype)
    if hasattr(model, "classifier"):  # WhisperForAudioClassification
        return {"last_hidden_state": model.encoder(features).last_hidden_state, "logits": model(features).logits}
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
    return {"last_hidden_state": encoder(features).last_hidden_state}


PARITY = ParitySpec(load_reference, make_inputs, run_zoo, run_reference)
