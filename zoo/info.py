"""Model facts for `zoo info`: parameter counts, layer shapes, analytic FLOPs per token."""

from dataclasses import dataclass

from torch import nn


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
    return any(p.isdigit() and int(p) > 0 and parts[i - 1] == "layers" for i, p in enumerate(parts))
