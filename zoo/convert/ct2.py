"""CTranslate2's model.bin: a reader for the binary format, independent of any family.

Layout (CTranslate2's python/ctranslate2/specs/model_spec.py ``_serialize``, read back by
src/models/model.cc), little-endian:

    uint32 binary version (zoo reads 4 to 6), string spec name, uint32 spec revision,
    uint32 n_variables, then per variable:
        string name, uint8 rank, uint32 dims[rank], uint8 dtype id, uint32 n_bytes, bytes
    uint32 n_aliases, then per alias: string alias, string variable name

A string is a uint16 length (with the trailing NUL) then the bytes and the NUL. dtype ids
follow CTranslate2's DataType enum: float32, int8, int16, int32, float16, bfloat16.

Quantized weights are stored as int8 (one scale per output row, ``name_scale``:
``w = q / scale``) or int16 (one scale for the whole tensor); ``read_ct2`` dequantizes them to
float32, so a family sees the same float tensors whatever ``--quantization`` made the file.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_SUPPORTED_VERSIONS = (4, 5, 6)


class CT2FormatError(ValueError):
    """A file that is not a CTranslate2 model.bin zoo can read; the message names the file."""


@dataclass
class CT2Model:
    """What a model.bin holds: its spec (``WhisperSpec``, ...), revision and named tensors."""

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]
    quantized: tuple[str, ...]  # variables stored as int8/int16 and dequantized here


class _Cursor:
    def __init__(self, data: np.ndarray, path: Path):
        self.data, self.offset, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            raise CT2FormatError(f"{self.path}: ends at byte {len(self.data)} inside a header; truncated?")
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self.take("H")
        raw = bytes(self.data[self.offset : self.offset + n])
        if len(raw) != n or not raw.endswith(b"\0"):
            raise CT2FormatError(f"{self.path}: bad string at byte {self.offset}; not a CTranslate2 model.bin?")
        self.offset += n
        return raw[:-1].decode("utf-8")

    def payload(self, n: int) -> np.ndarray:
        if self.offset + n > len(self.data):
            raise CT2FormatError(f"{self.path}: a tensor runs past the end of the file; truncated?")
        out = self.data[self.offset : self.offset + n]
        self.offset += n
        return out


def _tensor(raw: np.ndarray, dtype: str, shape: list[int]) -> torch.Tensor:
    if dtype == "bfloat16":  # numpy has no bfloat16: read the bits, view them in torch
        return torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(raw.view(np.dtype(dtype)).copy()).reshape(shape)


def read_ct2(path: str | Path) -> CT2Model:
    """Read every variable of a CTranslate2 model.bin; int8/int16 weights come back as float32."""
    path = Path(path)
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as err:
        raise CT2FormatError(f"{path}: cannot be read ({err})") from err
    cur = _Cursor(data, path)
    version = cur.take("I")
    if version not in _SUPPORTED_VERSIONS:
        raise CT2FormatError(
            f"{path}: binary version {version}; zoo reads CTranslate2 model.bin versions "
            f"{', '.join(map(str, _SUPPORTED_VERSIONS))} (not a CTranslate2 file, or one from an unsupported release)"
        )
    spec, revision = cur.string(), cur.take("I")
    raw: dict[str, torch.Tensor] = {}
    for _ in range(cur.take("I")):
        name = cur.string()
        rank = cur.take("B")
        shape = [cur.take("I") for _ in range(rank)]
        type_id, n_bytes = cur.take("B"), cur.take("I")
        if type_id >= len(_DTYPES):
            raise CT2FormatError(f"{path}: variable {name} has unknown dtype id {type_id}")
        dtype = _DTYPES[type_id]
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if n_bytes != int(np.prod(shape, dtype=np.int64)) * itemsize:
            raise CT2FormatError(f"{path}: variable {name} {shape} {dtype} has a payload of {n_bytes} bytes")
        raw[name] = _tensor(cur.payload(n_bytes), dtype, shape)
    aliases = {}
    for _ in range(cur.take("I")):
        alias = cur.string()
        aliases[alias] = cur.string()
    variables, quantized = {}, []
    for name, t in raw.items():
        if name.endswith("_scale") and name[: -len("_scale")] in raw:
            continue
        scale = raw.get(f"{name}_scale")
        if t.dtype in (torch.int8, torch.int16) and scale is not None:
            scale = scale.float()
            # int8: one scale per output row (conv weights flattened to rows); int16: one scalar.
            t = t.float() / (scale.reshape(-1, *[1] * (t.dim() - 1)) if scale.dim() else scale)
            quantized.append(name)
        variables[name] = t
    return CT2Model(spec, revision, version, variables, aliases, tuple(quantized))
