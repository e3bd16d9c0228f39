"""GenerationConfig: the decoding options of one generate call, checked at construction."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options; see ``generate`` for what each does. Checked at construction: a bad
    value raises ``ValueError`` naming the argument."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_token_id: tuple[int, ...] = field(default=())
    pad_token_id: int | None = None
    forced_bos_token_id: tuple[int, ...] = field(default=())
    forced_eos_token_id: tuple[int, ...] = field(default=())
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self):
        for name in ("eos_token_id", "forced_bos_token_id", "forced_eos_token_id"):
            ids = getattr(self, name)
            ids = () if ids is None else (ids,) if isinstance(ids, int) else tuple(ids)
            object.__setattr__(self, name, ids)
        if len(self.forced_bos_token_id) > 1:
            raise ValueError(f"forced_bos_token_id: one token can be forced first, got {self.forced_bos_token_id}")
        for name, low in (("max_new_tokens", 1), ("min_new_tokens", 0), ("num_beams", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens: {self.min_new_tokens} is more than max_new_tokens={self.max_new_tokens}")
        for name in ("eos_token_id", "pad_token_id", "forced_bos_token_id", "forced_eos_token_id", "seed"):
            values = getattr(self, name)
            for v in values if isinstance(values, tuple) else (values,):
                if v is not None and (not _is_int(v) or v < 0):
                    raise ValueError(f"{name}: must be a non-negative integer, got {v!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty: must be > 0 (1.0 is no penalty), got {self.repetition_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping: choose True, False or 'never', got {self.early_stopping!r}")
        if self.do_sample:
            if not self.temperature > 0:
                raise ValueError(
                    f"temperature: must be > 0 when sampling, got {self.temperature!r} "
                    "(for the most likely token every step, use do_sample=False)"
                )
            if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 0):
                raise ValueError(f"top_k: must be an integer >= 1 (0 or None: no top-k), got {self.top_k!r}")
            if self.top_p is not None and not 0 < self.top_p <= 1:
                raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
            if self.num_beams > 1:
                raise ValueError("num_beams: beam search is deterministic here; use do_sample=False with num_beams > 1")
        else:
            # Sampling options without sampling would be silently ignored; say so instead.
            ignored = {"temperature": self.temperature != 1.0, "top_k": self.top_k, "top_p": self.top_p is not None}
            for name, set_ in ignored.items():
                if set_:
                    raise ValueError(f"{name}: only used when sampling; pass do_sample=True")
        if self.num_beams == 1:
            for name, set_ in (("length_penalty", self.length_penalty != 1.0), ("early_stopping", self.early_stopping)):
                if set_:
                    raise ValueError(f"{name}: only used by beam search; pass num_beams > 1")

    @property
    def pad(self) -> int | None:
        """The token finished rows are filled with: pad_token_id, else the first end token."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_id[0] if self.eos_token_id else None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
