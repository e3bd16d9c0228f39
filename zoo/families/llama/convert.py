"""LLaMA / Mistral / Mixtral <-> Hugging Face transformers: configs and key rules.

One zoo config covers three transformers model types; on export the type follows from the
switches: experts make a ``mixtral``, a sliding window without experts a ``mistral``, anything
else a ``llama``.

Mixtral's experts appear on disk in two layouts: per expert
(``block_sparse_moe.experts.{e}.w1/w2/w3``, what ``MixtralForCausalLM.save_pretrained`` writes
and the public checkpoints hold) and fused (``mlp.experts.gate_up_proj`` (E, 2 d_ff, d) and
``mlp.experts.down_proj`` (E, d, d_ff), transformers 5's in-memory layout). Both are read; the
per-expert layout is written.
"""

from typing import Any

import torch

from zoo.config import ConfigError
from zoo.convert import Rule, drop, rename
from zoo.families.llama.config import ROPE_SCALING_KEYS, LlamaConfig

MODEL_TYPES = ("llama", "mistral", "mixtral")
ARCHITECTURES = {"LlamaForCausalLM": "causal_lm", "MistralForCausalLM": "causal_lm", "MixtralForCausalLM": "causal_lm"}


def _rope_from_hf(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from a transformers 5 ``rope_parameters`` dict or the older
    top-level ``rope_theta`` and ``rope_scaling``."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ROPE_SCALING_KEYS:
        raise ConfigError(
            f"rope_scaling: the checkpoint uses rope_type {kind!r}; zoo's LLaMA family reads "
            f"{', '.join(ROPE_SCALING_KEYS)} (or no scaling)"
        )
    return theta, {"rope_type": kind, **{k: params[k] for k in ROPE_SCALING_KEYS[kind] if k in params}}


def config_from_hf(hf: dict) -> LlamaConfig:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act: the checkpoint's MLP uses {act!r}; the LLaMA family is SwiGLU (silu) only")
    if hf.get("router_jitter_noise", 0.0):
        raise ConfigError(
            f"router_jitter_noise: {hf['router_jitter_noise']} (training-time router noise) is not implemented in zoo"
        )
    theta, scaling = _rope_from_hf(hf)
    moe = hf.get("model_type") == "mixtral"
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 4096),
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        # As many key/value heads as query heads is plain multi-head attention: zoo's None.
        n_kv_heads=None
        if hf.get("num_key_value_heads") in (None, hf["num_attention_heads"])
        else hf["num_key_value_heads"],
        head_dim=hf.get("head_dim") or None,
        d_ff=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=hf.get("sliding_window") or None,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        attn_bias=hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False),
        attn_dropout=hf.get("attention_dropout", 0.0),
        n_experts=hf["num_local_experts"] if moe else None,
        top_k=hf.get("num_experts_per_tok", 2) if moe else 2,
        aux_loss_coef=hf.get("router_aux_loss_coef", 0.001) if moe else 0.001,
        init_std=hf.get("initializer_range", 0.02),
    )


def hf_model_type(c: LlamaConfig) -> str:
    if c.n_experts is not None:
        return "mixtral"
    return "mistral" if c.sliding_window is not None else "llama"


def config_to_hf(c: LlamaConfig, task: str) -> dict[str, Any]:
    model_type = hf_model_type(c)
    if model_type != "llama":
        for name in ("attn_bias", "mlp_bias"):
            if getattr(c, name):
                raise ConfigError(
                    f"{name}: transformers' {model_type} has no such biases (this config is a {model_type} because "
                    f"of {'n_experts' if c.n_experts else 'sliding_window'}); save with format='zoo' instead"
                )
    if c.router_z_loss_coef and model_type == "mixtral":
        raise ConfigError(
            "router_z_loss_coef: transformers' Mixtral has no router z-loss; set it to 0 or save with format='zoo'"
        )
    hf: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}.get(
            model_type, "MixtralForCausalLM")],
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_seq_len,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.d_ff,
        "hidden_act": "silu",
        "rms_norm_eps": c.norm_eps,
        # The top-level form every transformers version reads (version 5 folds it into rope_parameters).
        "rope_theta": c.rope_theta,
        "rope_scaling": dict(c.rope_scaling) if c.rope_scaling else None,
        "tie_word_embeddings": c.tie_embeddings,
        "attention_dropout": c.attn_dropout,
        "initializer_range": c.init_std,
    }  # fmt: skip
    if model_type == "llama":
        hf.update(attention_bias=c.attn_bias, mlp_bias=c.mlp_bias)
    else:
        hf["sliding_window"] = c.sliding_window
    if model_type == "mixtral":
        hf.update(
            num_local_experts=c.n_experts,
            num_experts_per_tok=c.top_k,
            router_aux_loss_coef=c.aux_loss_coef,
            router_jitter_noise=0.0,
        )
    return hf


def _expert_split(n_experts: int, parts: int):
    """(E, parts * n, d) fused experts -> [expert 0 part 0, expert 0 part 1, ..., expert E-1 part parts-1]."""

    def fn(ts: list[torch.Tensor]) -> list[torch.Tensor]:
        fused = ts[0]
        if fused.dim() != 3 or fused.shape[0] != n_experts:
            raise ValueError(f"expected ({n_experts} experts, ...), got shape {tuple(fused.shape)}")
        return [p.contiguous() for e in range(n_experts) for p in fused[e].chunk(parts, dim=0)]

    def inv(ts: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.stack([torch.cat(ts[e * parts : (e + 1) * parts], 0) for e in range(n_experts)])]

    return fn, inv


def rules(c: LlamaConfig, task: str) -> list[Rule]:
    h = "model.layers.{i}"
    z = "layers.{i}"
    out = [rename("model.embed_tokens.weight", "embed.weight")]
    params = ("weight", "bias") if c.attn_bias else ("weight",)
    out += [rename(f"{h}.self_attn.{n}_proj.{p}", f"{z}.attn.{n}_proj.{p}") for n in "qkvo" for p in params]
    out += [
        rename(f"{h}.input_layernorm.weight", f"{z}.norm1.weight"),
        rename(f"{h}.post_attention_layernorm.weight", f"{z}.norm2.weight"),
    ]
    if c.n_experts is None:
        params = ("weight", "bias") if c.mlp_bias else ("weight",)
        out += [rename(f"{h}.mlp.{n}_proj.{p}", f"{z}.mlp.{n}.{p}") for n in ("gate", "up", "down") for p in params]
    else:
        moe = f"{h}.block_sparse_moe"
        # Per-expert layout first: it is what export writes (the inverse of the first matching rule wins).
        out.append(rename(f"{moe}.gate.weight", f"{z}.mlp.router.weight"))
        for src, dst in (("w1", "gate"), ("w3", "up"), ("w2", "down")):
            out.append(rename(f"{moe}.experts.{{e}}.{src}.weight", f"{z}.mlp.experts.{{e}}.{dst}.weight"))
        # transformers 5's fused layout.
        out.append(rename(f"{h}.mlp.gate.weight", f"{z}.mlp.router.weight"))
        experts = range(c.n_experts)
        gate_up = tuple(f"{z}.mlp.experts.{e}.{n}.weight" for e in experts for n in ("gate", "up"))
        down = tuple(f"{z}.mlp.experts.{e}.down.weight" for e in experts)
        out.append(Rule((f"{h}.mlp.experts.gate_up_proj",), gate_up, *_expert_split(c.n_experts, 2)))
        out.append(Rule((f"{h}.mlp.experts.down_proj",), down, *_expert_split(c.n_experts, 1)))
    out += [
        rename("model.norm.weight", "norm.weight"),
        # A buffer older checkpoints saved; zoo recomputes it from rope_theta and rope_scaling.
        drop(f"{h}.self_attn.rotary_emb.inv_freq"),
    ]
    # Tied checkpoints may still carry lm_head.weight, a copy of embed_tokens.
    out.append(drop("lm_head.weight") if c.tie_embeddings else rename("lm_head.weight", "lm_head.weight"))
    return out
