"""Registered BERT variants, each with the public config it mirrors."""

from zoo.families.bert.config import BertConfig
from zoo.registry import register_variant

_SRC = "https://huggingface.co/{}/blob/main/config.json"

register_variant("bert-base-uncased", "bert", BertConfig(), _SRC.format("google-bert/bert-base-uncased"))
register_variant(
    "bert-large-uncased",
    "bert",
    BertConfig(d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    _SRC.format("google-bert/bert-large-uncased"),
)
# A 6-layer MiniLM fine-tuned for sentence embeddings (mean pooling, normalised).
register_variant(
    "all-minilm-l6-v2",
    "bert",
    BertConfig(d_model=384, n_layers=6, n_heads=12, d_ff=1536),
    _SRC.format("sentence-transformers/all-MiniLM-L6-v2"),
)
# Tiny shapes for tests, one per task: non-square everywhere (d_ff != 4 * d_model, an odd
# vocabulary, three token types, three labels).
_TINY = BertConfig(
    vocab_size=211, max_seq_len=40, type_vocab_size=3, d_model=48, n_layers=2, n_heads=4, d_ff=104, n_labels=3
)
register_variant("bert-tiny", "bert", _TINY, "zoo test config")
register_variant("bert-mlm-tiny", "bert", _TINY, "zoo test config", task="masked_lm")
register_variant("bert-cls-tiny", "bert", _TINY, "zoo test config", task="sequence_classification")
