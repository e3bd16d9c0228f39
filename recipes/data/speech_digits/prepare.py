"""Prepare the spoken-digit clips of recipes/whisper-digits.yaml (see README.md beside this file).

Needs Debian's espeak-ng and asterisk-core-sounds-en-wav (apt-get install espeak-ng
asterisk-core-sounds-en-wav); run from the repository root:

    python recipes/data/speech_digits/prepare.py

Writes train.npz (espeak-ng speech, 8 kHz mu-law) and test/*.wav (the Asterisk recordings, copied).
"""

import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import torch
import torchaudio

HERE = Path(__file__).parent
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# espeak-ng's own English voices (no mbrola data needed), each spoken by its male and a female variant.
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANTS = ["", "+f3"]
RATE = 8000  # the test recordings' rate: train on the same telephone band
ASTERISK = Path("/usr/share/asterisk/sounds/en/digits")


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError("expected 16-bit mono WAV")
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return samples.astype(np.float32) / 32768, w.getframerate()


def trim(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(x) > threshold)
    return x[max(loud[0] - 400, 0) : loud[-1] + 400] if loud.size else x


def synthesize(word: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", word]
    x, rate = read_wav(subprocess.run(cmd, check=True, capture_output=True).stdout)
    x = torchaudio.functional.resample(torch.from_numpy(x), rate, RATE).numpy()
    return trim(x)


def main() -> None:
    rng = np.random.default_rng(0)
    clips, labels, voices = [], [], []
    for label, word in enumerate(WORDS):
        for voice in VOICES:
            for variant in VARIANTS:
                pitch, speed = int(rng.integers(30, 70)), int(rng.integers(140, 190))
                clips.append(synthesize(word, voice + variant, pitch, speed))
                labels.append(label)
                voices.append(f"{voice}{variant} p{pitch} s{speed}")
    codes = [torchaudio.functional.mu_law_encoding(torch.from_numpy(c).clamp(-1, 1), 256).numpy() for c in clips]
    offsets = np.cumsum([0] + [len(c) for c in codes])
    np.savez_compressed(
        HERE / "train.npz",
        mu_law=np.concatenate(codes).astype(np.uint8),
        offsets=offsets,
        labels=np.array(labels),
        voices=np.array(voices),
        sampling_rate=RATE,
    )
    (HERE / "test").mkdir(exist_ok=True)
    for label in range(10):
        shutil.copyfile(ASTERISK / f"{label}.wav", HERE / "test" / f"{label}.wav")
    print(f"{len(clips)} training clips ({offsets[-1] / RATE:.1f} s), 10 test recordings")


if __name__ == "__main__":
    main()
