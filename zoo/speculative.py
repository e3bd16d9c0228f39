"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a cheap draft model proposes
``k`` tokens one at a time, the target scores all of them in one forward, and the longest
prefix it agrees with is kept, plus one token of its own; so each target forward yields between
1 and k + 1 tokens.

- Greedy: a drafted token is kept while it is the target's argmax; the target's argmax then
  follows. The output is the target's own greedy output (up to ties the k + 1-token forward
  breaks differently from a 1-token one: fp32 matmuls of other shapes round differently).
- Sampling: drafted token x, drawn from the draft's q, is kept with probability
  min(1, p(x) / q(x)), p the target's distribution; at the first rejection the token is drawn
  from the residual max(0, p - q) / sum(max(0, p - q)), and if all k are kept one more is drawn
  from p. Each emitted token is then distributed exactly as the target alone would sample it.

Both models must share the vocabulary. One row at a time (batch 1): rows would accept different
numbers of tokens. The caches are static (a rolling-window cache cannot take back tokens).
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zoo.generation import _decode_layout, apply_top_k, apply_top_p
from zoo.quant import HEAD_BLOCK, quantize


@dataclass
class SpeculativeStats:
    """What one ``speculative_generate`` call did."""

    drafted: int = 0  # tokens the draft proposed
    accepted: int = 0  # of those, kept
    target_forwards: int = 0  # verification forwards (each yields accepted + 1 tokens)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return (self.accepted + self.target_forwards) / self.target_forwards if self.target_forwards else 0.0


def layer_skip_draft(model: nn.Module, n_layers: int) -> nn.Module:
    """A draft that is the target's own first ``n_layers`` layers, then its final norm and output
    projection (early exit, as in LayerSkip); it shares the target's weights, nothing is copied."""
    if not 1 <= n_layers < len(model.layers):
        raise ValueError(f"n_layers: a layer-skip draft needs 1 to {len(model.layers) - 1} layers, got {n_layers}")
    draft = copy.copy(model)
    draft._modules = dict(model._modules)  # a copy of the table, so the target keeps all its layers
    draft.layers = nn.ModuleList(list(model.layers)[:n_layers])
    return draft


def quantized_draft(model: nn.Module, kind: str = "int8", group_size: int | None = None) -> nn.Module:
    """A draft that is the target itself with int8 (or int4) weights (``zoo.quantize`` of a copy
    of its layers and output projection; the input embedding, final norm and config are shared,
    not copied). It proposes what the full-precision model would say almost always: at int8 it
    was accepted 94% of the time on SmolLM2-135M and 90-99% on a random GPT-2 124M, giving the fp32
    target's own greedy output 1.4-1.6x faster than the target alone (SmolLM2, 2 threads); the
    draft's own steps, only 2-3x cheaper than fp32 ones, are what limits it (docs/generation.md)."""
    if not hasattr(model, "layers") or not hasattr(model, "lm_head"):
        raise ValueError(f"model: a quantized draft is made from a decoder-only zoo model, not {type(model).__name__}")
    draft = copy.copy(model)
    draft.__dict__.pop("screened_head", None)  # the target's fp32 projection is not the draft's
    draft._modules = dict(model._modules)  # a copy of the table: the target keeps its own layers
    draft.layers = copy.deepcopy(model.layers)
    if model.lm_head is not None:
        draft.lm_head = copy.deepcopy(model.lm_head)
    # The head in 8-bit blocks of 32 inputs where they divide its width, else as the layers (a
    # draft only proposes: any head will do, and the target decides).
    width = (model.lm_head if model.lm_head is not None else model.embed).weight.shape[1]
    return quantize(draft, kind, group_size, head="int8-blocks" if width % HEAD_BLOCK == 0 else "same")


def _probs(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    scores = logits.float() / temperature
    if top_k:
        scores = apply_top_k(scores, top_k)
    if top_p is not None:
        scores = apply_top_p(scores, top_p)
    return scores.softmax(dim=-1)


def accept_drafts(
    p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The accept/reject rule for sampling, for N independent rows.

    Args:
        p: (N, k + 1, V) the target's distributions after the prefix and after each draft.
        q: (N, k, V) the draft's distributions its tokens were drawn from.
        drafts: (N, k) the drafted tokens.

    Returns:
        (accepted (N,) how many drafts are kept, token (N,) the token that follows them: drawn
        from the residual where a draft was rejected, from p[:, k] where all were kept).
    """
    N, k = drafts.shape
    p_x = p[:, :k].gather(-1, drafts[..., None]).squeeze(-1)  # (N, k)
    q_x = q.gather(-1, drafts[..., None]).squeeze(-1)
    u = torch.rand(N, k, generator=generator, device=p.device)
    keep = u * q_x < p_x  # u < p/q without dividing by a q of 0
    accepted = keep.long().cumprod(dim=1).sum(dim=1)  # (N,) length of the kept prefix
    rows = torch.arange(N, device=p.device)
    p_next = p[rows, accepted]  # (N, V)
    q_next = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)[rows, accepted]  # 0 where all were kept
    residual = (p_next - q_next).clamp(min=0)
    # p == q exactly leaves no residual, and then a rejection has probability 0; guard the division.
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_next)
    token = torch.multinomial(residual, 1, generator=generator).squeeze(1)
    return accepted, token


@torch.inference_mode()
def speculative_generate(
    target: nn.Module,
    draft: nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int = 20,
    k: int = 4,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, SpeculativeStats]:
    """Continue one prompt (1, T) with ``target``, drafting with ``draft``; returns (the prompt and
    the new tokens (1, T + new), the stats). Options as ``zoo.generate``'s; ``k`` tokens are
    drafted per round; ``streamer`` (a ``zoo.TextStreamer``, say) is called with each new token
    (a (1,) tensor) as soon as its round is verified, 1 to k + 1 of them a round."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids: speculative decoding takes one row (1, T), got {tuple(input_ids.shape)}")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(
            f"draft: vocab_size {draft.config.vocab_size} differs from the target's {target.config.vocab_size}; "
            "the draft must share the target's tokenizer"
        )
    for name, model in (("target", target), ("draft", draft)):
        if model.config.sliding_window is not None:
            raise ValueError(f"{name}: a sliding-window model's rolling cache cannot take back rejected tokens")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: draft at least 1 token a round, got {k!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be an integer >= 1, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature: must be > 0 when sampling, got {temperature!r}")
    if not do_sample and (temperature != 1.0 or top_k or top_p is not None):
        raise ValueError("temperature, top_k, top_p: only used when sampling; pass do_sample=True")
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)

    # The decoding kernels (oneDNN products for a few rows) for the target's k + 1-token
    # verifications and the draft's one-token steps; undone on return.
    with _decode_layout(target, rows=k + 1), _decode_layout(draft, rows=1):
        T = input_ids.shape[1]
        capacity = T + max_new_tokens + k + 1
        t_cache, d_cache = target.new_cache(1, capacity), draft.new_cache(1, capacity)
        seq = input_ids[0].tolist()
        stats = SpeculativeStats()
        # Invariant: the target's cache holds seq[:-1]; the draft's cache a prefix of seq.
        if T > 1:
            target(input_ids[:, :-1], cache=t_cache)
        while len(seq) - T < max_new_tokens:
            n = min(k, max_new_tokens - (len(seq) - T) - 1)  # drafts that can still be used
            drafts, q = [], []
            pending = seq[d_cache.length :]
            draft_screened = None if do_sample else draft.__dict__.get("screened_head")
            for _ in range(n):
                if draft_screened is not None:  # a layer-skip draft of a screened fp32 model
                    out = draft(torch.tensor([pending]), cache=d_cache, logits_to_keep=1, compute_logits=False)
                    drafts.append(int(draft_screened.argmax(out.last_hidden_state[0, -1:])[0]))
                    pending = drafts[-1:]
                    continue
                logits = draft(torch.tensor([pending]), cache=d_cache, logits_to_keep=1).logits[0, -1]
                if do_sample:
                    q.append(_probs(logits, temperature, top_k, top_p))
                    token = int(torch.multinomial(q[-1], 1, generator=generator))
                else:
                    token = int(logits.argmax())
                drafts.append(token)
                pending = [token]
            start = t_cache.length
            block = torch.tensor([seq[-1:] + drafts])  # (1, n + 1)
            screened = None if do_sample else target.__dict__.get("screened_head")
            if screened is not None:  # zoo.quant.screen_head: each row's argmax, without the logits
                choices = screened.argmax(target(block, cache=t_cache, compute_logits=False).last_hidden_state[0])
            else:
                logits = target(block, cache=t_cache).logits[0]  # (n + 1, V)
                choices = None if do_sample else logits.argmax(-1)
            stats.target_forwards += 1
            stats.drafted += n
            if do_sample:
                p = _probs(logits, temperature, top_k, top_p)
                if n:
                    kept, token = accept_drafts(p[None], torch.stack(q)[None], torch.tensor([drafts]), generator)
                    kept, token = int(kept), int(token)
                else:
                    kept, token = 0, int(torch.multinomial(p[0], 1, generator=generator))
            else:
                agree = choices[:n] == torch.tensor(drafts, dtype=torch.long)
                kept = int(agree.long().cumprod(0).sum())
                token = int(choices[kept])
            stats.accepted += kept
            new = [*drafts[:kept], token]
            t_cache.truncate(start + 1 + kept)  # seq[-1] and the kept drafts
            d_cache.truncate(min(d_cache.length, start + 1 + kept))
            for t in new:  # n was capped so that these never pass max_new_tokens
                seq.append(t)
                if streamer is not None:
                    streamer(torch.tensor([t], dtype=input_ids.dtype))
                if t in eos:
                    return torch.tensor([seq], dtype=input_ids.dtype), stats
        return torch.tensor([seq], dtype=input_ids.dtype), stats
