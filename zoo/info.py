"""Model facts for `zoo info`: parameter counts, layer shapes, analytic FLOPs per token, and
planning figures: training memory, KV-cache size, training FLOPs and time, Chinchilla budget."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode


@dataclass
class ModelInfo:
    name: str
    family: str
    params: int
    non_embedding_params: int
    flops_per_token_forward: int
    flops_per_token_train: int
    context: int
    shapes: list[tuple[str, tuple[int, ...]]]
    active_non_embedding_params: int | None = None  # mixtures of experts: what one token runs through

    def text(self) -> str:
        lines = [
            f"{self.name} (family {self.family})",
            f"  parameters:               {self.params:,} ({self.params / 1e6:.1f}M)",
            f"  non-embedding parameters: {self.non_embedding_params:,}",
        ]
        if self.active_non_embedding_params is not None:
            lines.append(f"  active per token:         {self.active_non_embedding_params:,} (top-k of the experts)")
        lines += [
            f"  FLOPs/token forward:      {self.flops_per_token_forward:,} "
            f"(2N + 2 n_layers n_ctx d_attn, n_ctx={self.context})",
            f"  FLOPs/token training:     {self.flops_per_token_train:,} (3x forward: the 6N rule plus attention)",
            "  shapes (first layer; the others repeat it):",
        ]
        lines += [f"    {name:<44} {tuple(shape)}" for name, shape in self.shapes]
        return "\n".join(lines)


def flops_per_token(non_embedding_params: int, n_layers: int, context: int, d_attn: int) -> int:
    """Forward FLOPs per token (Kaplan et al. 2020, Table 1): 2N for the weights' multiply-adds
    plus 2 n_layers n_ctx d_attn for attention scores and their weighted sum."""
    return 2 * non_embedding_params + 2 * n_layers * context * d_attn


def model_info(model: nn.Module, name: str, context: int | None = None) -> ModelInfo:
    """Facts about ``model``; ``context`` defaults to the config's max_seq_len."""
    c = model.config
    context = context or getattr(c, "max_seq_len", 0)
    n = model.num_parameters()
    n_ne = model.num_parameters(exclude_embeddings=True)
    # A mixture of experts sends each token through top_k experts only; FLOPs count those.
    active = model.num_active_parameters(exclude_embeddings=True) if hasattr(model, "num_active_parameters") else n_ne
    d_attn = getattr(c, "n_heads", 0) * getattr(c, "head_dim", 0)
    fwd = flops_per_token(active, getattr(c, "n_layers", 0), context, d_attn)
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items() if not _later_layer(k)]
    return ModelInfo(name, model.family, n, n_ne, fwd, 3 * fwd, context, shapes, active if active != n_ne else None)


def _later_layer(key: str) -> bool:
    parts = key.split(".")
    # "layers", and an encoder-decoder's "encoder_layers" / "decoder_layers"
    return any(p.isdigit() and int(p) > 0 and parts[i - 1].endswith("layers") for i, p in enumerate(parts))


# --- Scale: memory and compute planning -------------------------------------------------------

# Chinchilla (Hoffmann et al. 2022, Table 3): compute-optimal training uses about 20 tokens per parameter.
CHINCHILLA_TOKENS_PER_PARAM = 20
# The default throughput for time estimates: an A100's dense bf16 peak (312 TFLOP/s) at 40% MFU.
DEFAULT_THROUGHPUT = 312e12 * 0.4


def saved_activation_bytes(model: nn.Module, batch_size: int, seq_len: int) -> int:
    """Bytes autograd keeps for backward after one training forward of (batch_size, seq_len) tokens.

    Counted, not modelled: the forward runs (on the meta device, the model's device, when the
    model was built there, so nothing is allocated) with a saved-tensor hook that adds up every
    tensor autograd stores, once per storage, leaving out the parameters themselves. So the count
    follows the implementation (SDPA keeps q, k, v, the output and its log-sum-exp; eager
    attention keeps the T x T probabilities; GELU keeps its input, SwiGLU both halves), and the
    logits and their log-softmax are included. A mixture of experts on the meta device has no
    router values, so it assumes balanced routing (each expert gets N * top_k / n_experts tokens).
    """
    device = next(model.parameters()).device
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            seen[storage._cdata] = storage.nbytes()
        return t

    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad(), _FusedAttentionOnMeta():
            model(**training_inputs(model, ids))
    finally:
        model.train(was_training)
    return sum(seen.values())


class _FusedAttentionOnMeta(TorchFunctionMode):
    """On the meta device, SDPA would take its math fallback and keep the (T x T) probabilities,
    which no real device does: CPU runs the fused flash kernel and CUDA flash or memory-efficient
    attention, keeping q, k, v, the output and its log-sum-exp. Count that kernel instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args[0].is_meta:
            q, k, v = args[:3]
            dropout, causal = kwargs.get("dropout_p", 0.0), kwargs.get("is_causal", False)
            mask, scale = kwargs.get("attn_mask"), kwargs.get("scale")
            fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
            return fused(q, k, v, dropout, causal, attn_mask=mask, scale=scale)[0]
        return func(*args, **kwargs)


def training_inputs(model: nn.Module, ids: torch.Tensor) -> dict:
    """The keyword arguments of one training forward on ``ids`` (B, T): tokens and labels for a
    causal LM, pixels for an image model, log-mel frames for an audio encoder (T is then the
    encoder positions: 2T frames)."""
    c = model.config
    if hasattr(c, "n_mels"):
        frames = torch.zeros(ids.shape[0], c.n_mels, 2 * ids.shape[1], device=ids.device)
        return {"input_features": frames}
    if hasattr(c, "image_size"):
        pixels = torch.zeros(ids.shape[0], c.in_channels, c.image_size, c.image_size, device=ids.device)
        return {"pixel_values": pixels}
    inputs = {"input_ids": ids}
    if getattr(model, "task", "") in ("causal_lm", "masked_lm", "seq2seq_lm"):
        inputs["labels"] = ids  # an encoder-decoder: a target as long as the source
    return inputs


@dataclass
class TrainingMemory:
    """Bytes one process needs to train a model with AdamW, without sharding.

    ``activations`` is what the forward keeps for backward; with activation checkpointing a
    forward keeps only each layer's input (``activations_checkpointed``), and backward then
    recomputes one layer at a time, so its peak adds one layer's activations
    (``checkpointed_peak``).
    """

    batch_size: int
    seq_len: int
    dtype: torch.dtype
    weights: int
    gradients: int
    optimizer: int
    activations: int
    activations_checkpointed: int
    checkpointed_peak: int

    def total(self, checkpointing: bool = False) -> int:
        acts = self.checkpointed_peak if checkpointing else self.activations
        return self.weights + self.gradients + self.optimizer + acts


def training_memory(model: nn.Module, batch_size: int, seq_len: int, trainable_only: bool = True) -> TrainingMemory:
    """Weights, gradients, AdamW state and activations for batch_size x seq_len tokens.

    The parameters' own dtype is the training dtype (build the model in bfloat16 for bf16
    training); torch's AdamW keeps two moments (exp_avg, exp_avg_sq) of each trainable
    parameter's size and dtype. Build the model on the meta device to plan a size that does not
    fit: nothing is allocated.
    """
    params = list({id(p): p for p in model.parameters()}.values())
    trainable = [p for p in params if p.requires_grad or not trainable_only]
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    full = saved_activation_bytes(model, batch_size, seq_len)
    checkpointing = getattr(model, "gradient_checkpointing", False)
    model.set_gradient_checkpointing(True)
    try:
        outside_layers = saved_activation_bytes(model, batch_size, seq_len)  # hooks see no layer internals
    finally:
        model.set_gradient_checkpointing(checkpointing)
    c = model.config
    dtype = params[0].dtype
    n_layers = getattr(c, "n_layers", 1)
    tokens = batch_size * _sequence_length(c, seq_len)
    layer_inputs = n_layers * tokens * c.d_model * torch.finfo(dtype).bits // 8
    one_layer = (full - outside_layers) // max(n_layers, 1)
    kept = outside_layers + layer_inputs
    return TrainingMemory(batch_size, seq_len, dtype, weights, grads, 2 * grads, full, kept, kept + one_layer)


def _sequence_length(config, seq_len: int) -> int:
    """Tokens per example the layers see: the patches (+ class token) of an image model."""
    if hasattr(config, "image_size"):
        return (config.image_size // config.patch_size) ** 2 + 1
    return seq_len


def kv_cache_bytes_per_token(config, dtype: torch.dtype = torch.float32) -> int:
    """Bytes a decoder's KV cache grows by per token: keys and values of every layer."""
    n_kv = getattr(config, "n_kv_heads", None) or config.n_heads
    return 2 * config.n_layers * n_kv * config.head_dim * torch.finfo(dtype).bits // 8


@dataclass
class ComputePlan:
    """FLOPs and time to train on ``tokens`` tokens, and Chinchilla's compute-optimal budget."""

    tokens: int
    flops: float
    seconds: float
    throughput: float
    chinchilla_tokens: int
    chinchilla_flops: float


def compute_plan(info: ModelInfo, tokens: int | None = None, throughput: float = DEFAULT_THROUGHPUT) -> ComputePlan:
    """Training FLOPs for ``tokens`` tokens (default: Chinchilla's ~20 per parameter), as
    ``tokens x`` the per-token training FLOPs (6N plus attention), and the time at ``throughput``
    achieved FLOP/s."""
    if throughput <= 0:
        raise ValueError(f"throughput: must be positive FLOP/s, got {throughput}")
    optimal = CHINCHILLA_TOKENS_PER_PARAM * info.params
    tokens = optimal if tokens is None else tokens
    if tokens <= 0:
        raise ValueError(f"tokens: must be positive, got {tokens}")
    flops = float(tokens) * info.flops_per_token_train
    optimal_flops = float(optimal) * info.flops_per_token_train
    return ComputePlan(tokens, flops, flops / throughput, throughput, optimal, optimal_flops)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return ""


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def scale_text(memory: TrainingMemory | None, kv_per_token: int | None, plan: ComputePlan) -> str:
    """The `zoo info` lines on memory and compute."""
    lines = []
    if memory is not None:
        m = memory
        dt = str(m.dtype).removeprefix("torch.")
        lines += [
            f"  training memory, batch {m.batch_size} x {m.seq_len} tokens, {dt}, AdamW, one process:",
            f"    weights                  {_bytes(m.weights)}",
            f"    gradients                {_bytes(m.gradients)}",
            f"    AdamW state (2 moments)  {_bytes(m.optimizer)}",
            f"    activations              {_bytes(m.activations)} (total {_bytes(m.total())})",
            f"    with checkpointing       {_bytes(m.checkpointed_peak)} at the backward peak, "
            f"{_bytes(m.activations_checkpointed)} kept (total {_bytes(m.total(True))})",
        ]
    if kv_per_token is not None:
        lines.append(f"  KV cache per token:       {_bytes(kv_per_token)} (all layers, keys and values)")
    p = plan
    lines += [
        f"  training on {p.tokens:.3g} tokens: {p.flops:.3g} FLOPs, "
        f"{_duration(p.seconds)} at {p.throughput:.3g} FLOP/s",
        f"  compute-optimal (Chinchilla, {CHINCHILLA_TOKENS_PER_PARAM} tokens/parameter): "
        f"{p.chinchilla_tokens:.3g} tokens, {p.chinchilla_flops:.3g} FLOPs",
    ]
    return "\n".join(lines)
