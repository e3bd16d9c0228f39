"""Mixture of experts: a top-k router over gated-MLP experts, with the Switch/Mixtral balancing loss."""

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks.mlp import make_mlp


class MoE(nn.Module):
    """Sparse MoE feed-forward layer (Shazeer et al. 2017; Mixtral's form).

    Args:
        d_model: input and output width.
        d_ff: hidden width of each expert.
        n_experts: number of experts.
        top_k: experts each token is sent to.
        kind: MLP kind of each expert (``"swiglu"`` for Mixtral).
        bias: biases in the experts.
        normalize_top_k: renormalise the chosen experts' probabilities to sum to 1 (Mixtral).

    After a forward, ``self.router_logits`` (N, n_experts) holds this call's router logits,
    from which a model computes its auxiliary losses over all layers.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int,
        top_k: int = 2,
        kind: str = "swiglu",
        bias: bool = False,
        normalize_top_k: bool = True,
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k: must be between 1 and n_experts={n_experts}, got {top_k}")
        self.n_experts, self.top_k, self.normalize_top_k = n_experts, top_k, normalize_top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(make_mlp(kind, d_model, d_ff, bias=bias) for _ in range(n_experts))
        self.router_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d_model)
        logits = self.router(x)  # (N, E)
        self.router_logits = logits
        probs = logits.float().softmax(dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.normalize_top_k:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(x)
        for e, (token, slot) in self._routes(chosen):
            # index_put_ rather than index_add_: the same sum (a token picks an expert once), but
            # CPU index_add_ can stall for tens of ms on a busy multi-threaded machine.
            out.index_put_((token,), self.experts[e](x[token]) * weights[token, slot, None], accumulate=True)
        return out.reshape(shape)

    def _routes(self, chosen: torch.Tensor):
        """(expert, (token indices, top-k slots)) for every expert some token chose."""
        if chosen.is_meta:
            # Shapes only (zoo info plans memory on the meta device): no router values to follow,
            # so assume balanced routing, each expert getting an equal share of the N * top_k slots.
            share = -(-chosen.numel() // self.n_experts)
            idx = torch.zeros(share, dtype=torch.long, device=chosen.device)
            return [(e, (idx, idx)) for e in range(self.n_experts)]
        return [(e, (chosen == e).nonzero(as_tuple=True)) for e in chosen.unique().tolist()]


def load_balancing_loss(
    router_logits: list[torch.Tensor], n_experts: int, top_k: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch Transformer balancing loss over all MoE layers' router logits, Mixtral's form.

    ``E * sum_e f_e * P_e`` where f_e is the fraction of (token, slot) routings that chose
    expert e and P_e the mean router probability of e, both over every layer's tokens (padding
    excluded when ``attention_mask`` (B, T) is given). Equals 1 * top_k for perfectly uniform routing.
    """
    logits = torch.cat(list(router_logits), dim=0).float()  # (L * N, E)
    probs = logits.softmax(dim=-1)
    _, chosen = probs.topk(top_k, dim=-1)
    expert_mask = F.one_hot(chosen, n_experts).float()  # (L * N, k, E)
    if attention_mask is None:
        tokens_per_expert = expert_mask.mean(dim=0)  # (k, E)
        prob_per_expert = probs.mean(dim=0)  # (E,)
    else:
        n_layers = logits.shape[0] // attention_mask.numel()
        keep = attention_mask.reshape(-1).float().repeat(n_layers)  # (L * N,)
        tokens_per_expert = (expert_mask * keep[:, None, None]).sum(0) / keep.sum()
        prob_per_expert = (probs * keep[:, None]).sum(0) / keep.sum()
    return (tokens_per_expert * prob_per_expert[None]).sum() * n_experts


def router_z_loss(router_logits: list[torch.Tensor]) -> torch.Tensor:
    """ST-MoE's router z-loss: mean squared log-sum-exp of the router logits, keeps them small."""
    logits = torch.cat(list(router_logits), dim=0).float()
    return torch.logsumexp(logits, dim=-1).pow(2).mean()
