"""BERT <-> Hugging Face transformers (BertModel, BertForMaskedLM, BertForSequenceClassification)."""

from zoo.config import ConfigError
from zoo.convert import Rule, drop, rename
from zoo.convert.hf import activation_from_hf, activation_to_hf, labels_to_hf, n_labels_from_hf
from zoo.families.bert.config import BertConfig

ARCHITECTURES = {
    "base": "BertModel",
    "masked_lm": "BertForMaskedLM",
    "sequence_classification": "BertForSequenceClassification",
}


def config_from_hf(hf: dict) -> BertConfig:
    mlp = activation_from_hf(hf.get("hidden_act", "gelu"), "hidden_act", "BERT")
    # Switches of transformers' BERT that change the arithmetic and that zoo's BERT does not have:
    # refuse them rather than load a model that computes something else.
    for key, default in (("position_embedding_type", "absolute"), ("is_decoder", False),
                         ("add_cross_attention", False), ("tie_word_embeddings", True)):  # fmt: skip
        if hf.get(key, default) != default:
            raise ConfigError(f"{key}: BERT checkpoint sets {key}={hf[key]!r}; zoo's BERT supports only {default!r}")
    return BertConfig(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        mlp=mlp,
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        classifier_dropout=hf.get("classifier_dropout"),
        n_labels=n_labels_from_hf(hf),
        problem_type=hf.get("problem_type"),
        pad_token_id=hf.get("pad_token_id", 0),
    )


def config_to_hf(c: BertConfig, task: str) -> dict:
    return {
        "model_type": "bert",
        "architectures": [ARCHITECTURES[task]],
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_seq_len,
        "type_vocab_size": c.type_vocab_size,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "intermediate_size": c.d_ff,
        "hidden_act": activation_to_hf(c.mlp, "mlp", "BERT"),
        "layer_norm_eps": c.norm_eps,
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.attn_dropout,
        "classifier_dropout": c.classifier_dropout,
        "problem_type": c.problem_type,
        **labels_to_hf(c.n_labels),
        "pad_token_id": c.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def _trunk(p: str) -> list[Rule]:
    """The encoder under prefix ``p`` ("" for BertModel, "bert." inside a head model)."""
    e, h = f"{p}embeddings", f"{p}encoder.layer.{{i}}"
    out = [
        rename(f"{e}.word_embeddings.weight", "embed.weight"),
        rename(f"{e}.position_embeddings.weight", "pos.weight"),
        rename(f"{e}.token_type_embeddings.weight", "token_type.weight"),
        # Older checkpoints (all-MiniLM-L6-v2 among them) store the position-id buffer.
        drop(f"{e}.position_ids"),
    ]
    pairs = [
        ("attention.self.query", "attn.q_proj"),
        ("attention.self.key", "attn.k_proj"),
        ("attention.self.value", "attn.v_proj"),
        ("attention.output.dense", "attn.o_proj"),
        ("attention.output.LayerNorm", "norm1"),
        ("intermediate.dense", "mlp.up"),
        ("output.dense", "mlp.down"),
        ("output.LayerNorm", "norm2"),
    ]
    for w in ("weight", "bias"):
        out.append(rename(f"{e}.LayerNorm.{w}", f"embed_norm.{w}"))
        out += [rename(f"{h}.{src}.{w}", f"layers.{{i}}.{dst}.{w}") for src, dst in pairs]
    return out


def _pooler(p: str) -> list[Rule]:
    return [rename(f"{p}pooler.dense.{w}", f"pooler.dense.{w}") for w in ("weight", "bias")]


# What a pre-training checkpoint (bert-base-uncased's BertForPreTraining weights) holds beyond a
# model: the next-sentence head, and the decoder's copies of the tied embedding and of the bias.
_PRETRAINING_EXTRAS = ["cls.seq_relationship.weight", "cls.seq_relationship.bias",
                       "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]  # fmt: skip
_MLM = [("cls.predictions.transform.dense", "mlm.dense"), ("cls.predictions.transform.LayerNorm", "mlm.norm")]


def rules(c: BertConfig, task: str) -> list[Rule]:
    """Rules from transformers' layout to zoo's; inverted, the first rule matching a key exports it."""
    if task == "base":
        # BertModel saves without prefix; a head model's trunk sits under "bert.". Read both,
        # export the first; a head model's head is not part of the base model and is left out.
        head_keys = ["cls.predictions.bias", "classifier.weight", "classifier.bias"] + [
            f"{src}.{w}" for src, _ in _MLM for w in ("weight", "bias")
        ]
        return (
            _trunk("")
            + _pooler("")
            + _trunk("bert.")
            + _pooler("bert.")
            + [drop(k) for k in _PRETRAINING_EXTRAS + head_keys]
        )
    if task == "masked_lm":
        out = [*_trunk("bert."), rename("cls.predictions.bias", "mlm.bias")]
        out += [rename(f"{src}.{w}", f"{dst}.{w}") for src, dst in _MLM for w in ("weight", "bias")]
        # BertForMaskedLM has no pooler; a pre-training checkpoint's is not read, as transformers does.
        return out + [drop(k) for k in [*_PRETRAINING_EXTRAS, "bert.pooler.dense.weight", "bert.pooler.dense.bias"]]
    if task == "sequence_classification":
        return (
            _trunk("bert.")
            + _pooler("bert.")
            + [rename(f"classifier.{w}", f"classifier.{w}") for w in ("weight", "bias")]
        )
    raise ValueError(f"task: BERT has no task {task!r}; choose one of {', '.join(ARCHITECTURES)}")
