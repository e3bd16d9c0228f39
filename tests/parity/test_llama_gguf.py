"""GGUF files written here from tiny random transformers models, the way llama.cpp's converter
writes them (q/k rows permuted, dims reversed, weights block-quantized), then read by zoo and by
transformers' own GGUF reader and compared; plus the files zoo must refuse with a clear error.
"""

import json
import math

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from tokenizers import SentencePieceBPETokenizer, Tokenizer, models, pre_tokenizers, trainers

import zoo
from tests.conftest import randomize_
from zoo.convert import rename
from zoo.families.llama import gguf as llama_gguf
from zoo.hub import CheckpointError
from zoo.lm import positions_from_mask
from zoo.parity import padded_token_batch, run_parity

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello world! How are you today? I am fine, thank you.",
    "def forward(self, x): return self.proj(x) + x  # residual",
] * 4
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _train_vocab() -> tuple[list[str], list[str]]:
    """A small byte-level BPE (tokens in id order, merges as "a b"), trained on CORPUS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=331, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    model = json.loads(tok.model.__getstate__())
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return [t for t, _ in vocab], merges


TOKENS, MERGES = _train_vocab()
VOCAB = len(TOKENS)


def _train_sentencepiece_vocab() -> tuple[list[str], list[float], list[int]]:
    """A LLaMA 2-style SentencePiece BPE vocabulary as llama.cpp stores it: <unk>, <s>, </s>, the 256
    byte tokens <0xNN>, then the pieces, each scored by how early it was learned (no merges)."""
    spm = SentencePieceBPETokenizer(replacement="\u2581")
    spm.train_from_iterator(CORPUS, vocab_size=420, min_frequency=1, special_tokens=[])
    pieces = [t for t, _ in sorted(spm.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)  # unknown, control, byte, normal
    return tokens, scores, types


SPM_TOKENS, SPM_SCORES, SPM_TYPES = _train_sentencepiece_vocab()


def _to_gguf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute``: half-split rotary rows -> interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _gguf_tensors(model) -> dict[str, torch.Tensor]:
    c = model.config
    state = model.state_dict()
    out = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    if not c.tie_word_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    for i in range(c.num_hidden_layers):
        h, b = f"model.layers.{i}", f"blk.{i}"
        out[f"{b}.attn_norm.weight"] = state[f"{h}.input_layernorm.weight"]
        out[f"{b}.ffn_norm.weight"] = state[f"{h}.post_attention_layernorm.weight"]
        out[f"{b}.attn_q.weight"] = _to_gguf_rows(state[f"{h}.self_attn.q_proj.weight"], c.num_attention_heads)
        out[f"{b}.attn_k.weight"] = _to_gguf_rows(state[f"{h}.self_attn.k_proj.weight"], c.num_key_value_heads)
        out[f"{b}.attn_v.weight"] = state[f"{h}.self_attn.v_proj.weight"]
        out[f"{b}.attn_output.weight"] = state[f"{h}.self_attn.o_proj.weight"]
        if c.model_type == "mixtral":
            experts = range(c.num_local_experts)
            out[f"{b}.ffn_gate_inp.weight"] = state[f"{h}.mlp.gate.weight"]
            gate_up = state[f"{h}.mlp.experts.gate_up_proj"]  # (E, 2 d_ff, d), transformers 5's in-memory layout
            out[f"{b}.ffn_gate_exps.weight"] = torch.stack([gate_up[e].chunk(2)[0] for e in experts])
            out[f"{b}.ffn_up_exps.weight"] = torch.stack([gate_up[e].chunk(2)[1] for e in experts])
            out[f"{b}.ffn_down_exps.weight"] = state[f"{h}.mlp.experts.down_proj"]
        else:
            for n in ("gate", "up", "down"):
                out[f"{b}.ffn_{n}.weight"] = state[f"{h}.mlp.{n}_proj.weight"]
    return out


def write_gguf(path, model, qtype=Q.F32, arch="llama", tokenizer_model="gpt2", pre="default", extra=None):
    """Write ``model`` (a transformers Llama/Mixtral) as llama.cpp would; 2-D+ weights in ``qtype``,
    norms in F32. ``extra``: name -> (array, raw qtype or None) added or replacing tensors."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.head_dim or c.hidden_size // c.num_attention_heads)
    if c.model_type == "mixtral":
        w.add_expert_count(c.num_local_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
    w.add_tokenizer_model(tokenizer_model)
    if tokenizer_model == "llama":  # SentencePiece: scores instead of merges; BOS added by default
        w.add_token_list(SPM_TOKENS)
        w.add_token_scores(SPM_SCORES)
        w.add_token_types(SPM_TYPES)
        w.add_unk_token_id(0)
    else:
        w.add_tokenizer_pre(pre)
        w.add_token_list(TOKENS)
        w.add_token_merges(MERGES)
        w.add_token_types([3 if t in SPECIALS else 1 for t in TOKENS])
        w.add_add_bos_token(False)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(TEMPLATE)
    tensors = {k: (v.detach().float().numpy(), None) for k, v in _gguf_tensors(model).items()}
    tensors.update(extra or {})
    for name, (array, raw) in tensors.items():
        if raw is not None:
            w.add_tensor(name, array, raw_dtype=raw)
        elif array.ndim == 1 or qtype == Q.F32:
            w.add_tensor(name, array.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(name, array.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# Widths are multiples of 32 (the quantization block); GQA 4:2, d_ff = 3 x 32 != 4 d_model, odd vocab.
LLAMA = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5,
             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)  # fmt: skip


def _llama(**overrides):
    return randomize_(transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, **overrides})))


def test_vocabulary_is_odd_sized_and_complete():
    assert VOCAB % 2 == 1 or VOCAB % 64, VOCAB
    assert len(set(TOKENS)) == VOCAB and len(MERGES) > 10


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_parity_with_transformers_gguf_reader(qtype, tmp_path):
    """zoo and transformers each dequantize and un-permute the same file; fp32 logits agree."""
    path = write_gguf(tmp_path / f"tiny-{qtype.name}.gguf", _llama(), qtype)
    report = run_parity(path, dtypes=("float32",))
    assert report.ok, report.table()
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    # Random tiny models: the 1e-5 bound of the tolerance table's default row is met as well.
    assert all(r.max_abs_diff < 1e-5 for r in report.rows), report.table()


def test_quantized_weights_are_the_dequantized_blocks(tmp_path):
    """A Q4_1 file holds other numbers than the model it came from: zoo reads the file's numbers
    (what transformers reads too, per the parity above), not something near the originals."""
    model = _llama()
    path = write_gguf(tmp_path / "q.gguf", model, Q.Q4_1)
    ours = zoo.from_pretrained(path)
    original = model.model.layers[0].mlp.up_proj.weight
    blocks = gguf.quants.quantize(original.detach().numpy(), Q.Q4_1)
    expected = torch.from_numpy(gguf.quants.dequantize(blocks, Q.Q4_1))
    assert torch.equal(ours.layers[0].mlp.up.weight, expected)
    assert not torch.equal(expected, original.detach())


def test_tied_embeddings_when_output_weight_is_absent(tmp_path):
    path = write_gguf(tmp_path / "tied.gguf", _llama(tie_word_embeddings=True), Q.Q8_0)
    model = zoo.from_pretrained(path)
    assert model.config.tie_embeddings and model.lm_head is None
    assert run_parity(path, dtypes=("float32",)).ok


def test_metadata_becomes_the_config(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", _llama(rms_norm_eps=3e-6, rope_theta=5000.0), Q.Q8_0)
    c = zoo.from_pretrained(path).config
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff) == (
        VOCAB, 64, 2, 4, 2, 16, 96,
    )  # fmt: skip
    assert c.max_seq_len == 64 and c.rope_theta == 5000.0 and math.isclose(c.norm_eps, 3e-6, rel_tol=1e-6)
    assert not c.tie_embeddings and c.n_experts is None


def test_parity_fails_without_the_rope_row_permutation(tmp_path, monkeypatch):
    """Read attn_q/attn_k rows as they are stored: the parity check must notice."""
    path = write_gguf(tmp_path / "p.gguf", _llama(), Q.F32)
    right = llama_gguf.gguf_rules

    def wrong(config):
        return [
            rename(r.src[0], r.dst[0]) if "attn_q" in r.src[0] or "attn_k" in r.src[0] else r for r in right(config)
        ]

    monkeypatch.setattr(llama_gguf, "gguf_rules", wrong)
    report = run_parity(path, dtypes=("float32",), roundtrip=False)
    assert not report.ok


def test_mixtral_gguf_matches_the_same_model_from_safetensors(tmp_path):
    """Stacked experts (ffn_*_exps) and the router: zoo's GGUF read equals the transformers model the
    file came from (transformers' GGUF reader does not read llama-architecture MoE files)."""
    config = transformers.MixtralConfig(**{**LLAMA, "num_local_experts": 3, "num_experts_per_tok": 2})
    ref = randomize_(transformers.MixtralForCausalLM(config))
    model = zoo.from_pretrained(write_gguf(tmp_path / "moe.gguf", ref, Q.F32))
    assert (model.config.n_experts, model.config.top_k) == (3, 2)
    inputs = padded_token_batch(model, torch.Generator().manual_seed(0))
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        ours = model(**inputs)
        theirs = ref(**inputs, position_ids=positions_from_mask(inputs["attention_mask"]), output_router_logits=True)
    assert (ours.logits - theirs.logits)[mask].abs().max() < 1e-5
    assert abs(ours.aux_loss - theirs.aux_loss) < 1e-5


def test_llama3_rope_factors_are_recovered(tmp_path):
    """Llama 3.1+ files store RoPE scaling as per-frequency factors (rope_freqs.weight), computed as
    llama.cpp's converter does; zoo turns them back into the rope_scaling they came from."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}  # fmt: skip
    ref = _llama(rope_parameters={"rope_theta": 500000.0, **scaling}, max_position_embeddings=64)
    head_dim, theta = 16, 500000.0
    factors = []
    for freq in 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim):
        wavelen = 2 * math.pi / freq
        if wavelen < 8192 / 4.0:
            factors.append(1.0)
        elif wavelen > 8192 / 1.0:
            factors.append(8.0)
        else:
            smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
            factors.append(1 / ((1 - smooth) / 8.0 + smooth))
    extra = {"rope_freqs.weight": (np.array(factors, dtype=np.float32), None)}
    model = zoo.from_pretrained(write_gguf(tmp_path / "l3.gguf", ref, Q.F32, extra=extra))
    assert model.config.rope_scaling == scaling
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids).logits - ref(ids).logits).abs().max() < 1e-5


# ---- the GGUF tokenizer ----------------------------------------------------------------------

TEXTS = ["The capital of France is Paris.", "Hello world!  How are you?\n\nI am fine", "def f(x): return x  # ok",
         "Ünïcödé text, never seen in training: 日本語", "<|im_start|>user\nHi<|im_end|>\n"]  # fmt: skip


@pytest.mark.parametrize("pre", ["default", "llama-bpe"])
def test_tokenizer_matches_transformers(pre, tmp_path):
    path = write_gguf(tmp_path / "tok.gguf", _llama(), Q.Q8_0, pre=pre)
    ours = zoo.load_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=True), text
        assert ours.decode(ids, skip_special_tokens=False) == text
    assert ours.encode("<|im_start|>")[0] == 1 and ours.bos_token == "<|im_start|>" and ours.eos_token_id == 2
    prompt = ours.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n"


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
    """LLaMA 2 / Mistral files: merges rebuilt from the scores, byte fallback for characters the
    vocabulary lacks, a space prepended, BOS added."""
    path = write_gguf(tmp_path / "spm.gguf", _llama(vocab_size=len(SPM_TOKENS)), Q.Q8_0, tokenizer_model="llama")
    ours = zoo.load_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in [*TEXTS[:4], "<s>Hi</s> again", " leading space", "tabs\tand\nnewlines"]:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), text
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids, skip_special_tokens=False)
    ids = ours.encode("Paris 日本")
    assert ids[0] == ours.bos_token_id == 1 and ours.decode(ids) == "Paris 日本"
    assert any(SPM_TOKENS[i].startswith("<0x") for i in ids)  # 日本 is spelled in UTF-8 byte tokens


def test_smollm_pre_tokenizer_splits_digits(tmp_path):
    """llama.cpp's "smollm" pre-tokenizer (also starcoder's) splits every digit off on its own."""
    path = write_gguf(tmp_path / "tok.gguf", _llama(), Q.Q8_0, pre="smollm")
    tok = zoo.load_tokenizer(path)
    pieces = [tok.decode([i]) for i in tok.encode("in 2024 we")]
    assert pieces[pieces.index("2") : pieces.index("2") + 4] == ["2", "0", "2", "4"]


# ---- files zoo must refuse -------------------------------------------------------------------


def test_unsupported_architecture_is_named(tmp_path):
    path = write_gguf(tmp_path / "g.gguf", _llama(), Q.F32, arch="gpt2")
    with pytest.raises(CheckpointError, match=r"general.architecture is 'gpt2'; zoo reads GGUF files of architecture"):
        zoo.from_pretrained(path)


@pytest.mark.parametrize("qtype", [Q.Q8_1, Q.I32])
def test_unsupported_quantization_is_named(qtype, tmp_path):
    # Raw bytes for a (32, 64) tensor: Q8_1 blocks of 32 values in 40 bytes, or 4-byte integers.
    bad = np.zeros((32, 64 // 32 * 40) if qtype == Q.Q8_1 else (32, 64 * 4), dtype=np.uint8)
    extra = {"blk.0.attn_v.weight": (bad, qtype)}
    path = write_gguf(tmp_path / "q.gguf", _llama(), Q.F32, extra=extra)
    with pytest.raises(CheckpointError, match=rf"tensor blk.0.attn_v.weight \(32, 64\) is stored as {qtype.name}"):
        zoo.from_pretrained(path)


@pytest.mark.parametrize("keep", [0.6, 0.9999, 100, 10])
def test_truncated_file_gets_a_clear_error(keep, tmp_path):
    path = write_gguf(tmp_path / "full.gguf", _llama(), Q.Q8_0)
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(CheckpointError, match=r"cut.gguf: not a readable GGUF file, truncated or corrupt\?"):
        zoo.from_pretrained(cut)
    with pytest.raises(CheckpointError, match=r"truncated or corrupt"):
        zoo.load_tokenizer(cut)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip file, not a GGUF" * 10)
    with pytest.raises(CheckpointError, match=r"model.gguf: not a readable GGUF file"):
        zoo.from_pretrained(path)


def test_unsupported_tokenizer_kind_and_pre_tokenizer_are_named(tmp_path):
    path = write_gguf(tmp_path / "wp.gguf", _llama(), Q.F32, tokenizer_model="bert")
    with pytest.raises(CheckpointError, match=r"tokenizer.ggml.model is 'bert'; zoo builds GGUF tokenizers of kind"):
        zoo.load_tokenizer(path)
    path = write_gguf(tmp_path / "pre.gguf", _llama(), Q.F32, pre="qwen2")
    with pytest.raises(CheckpointError, match=r"tokenizer.ggml.pre is 'qwen2', a pre-tokenizer zoo does not know"):
        zoo.load_tokenizer(path)


def test_missing_metadata_is_named(tmp_path, monkeypatch):
    model = _llama()
    monkeypatch.setattr(gguf.GGUFWriter, "add_feed_forward_length", lambda self, n: None)
    path = write_gguf(tmp_path / "m.gguf", model, Q.F32)
    with pytest.raises(CheckpointError, match=r"GGUF metadata has no 'llama.feed_forward_length'"):
        zoo.from_pretrained(path)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16])
@pytest.mark.parametrize("tied", [False, True])
def test_native_keeps_16_bit_weights_in_bf16(qtype, tied, tmp_path):
    """quantization="native" on an F16/BF16 file: every projection a bf16 layer holding the
    file's weights (BF16 exactly, F16 rounded to bf16), logits near the fp32 load's. (A random
    model's logits lie close together, so bf16 reorders some: top tokens are compared by share.)"""
    from zoo.quant import QuantLinear, quantization_summary

    path = write_gguf(tmp_path / f"h-{qtype.name}.gguf", _llama(tie_word_embeddings=tied), qtype)
    ref = zoo.from_pretrained(path)
    native = zoo.from_pretrained(path, quantization="native")
    assert not [n for n, m in native.named_modules() if isinstance(m, torch.nn.Linear)]
    layers = [m for m in native.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.kind == "bf16" for m in layers)
    assert quantization_summary(native) == "float32, weights bf16 (9 layers), their matmuls in bfloat16"
    attn = native.layers[1].attn
    expected = torch.cat([ref.layers[1].attn.q_proj.weight, ref.layers[1].attn.k_proj.weight,
                          ref.layers[1].attn.v_proj.weight]).to(torch.bfloat16)  # fmt: skip
    assert torch.equal(attn.qkv_proj.codes, expected)  # RoPE rows un-permuted as in the fp32 path
    if qtype == Q.BF16:
        assert torch.equal(native.layers[0].mlp.down.codes.float(), ref.layers[0].mlp.down.weight)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(ids).logits, native(ids).logits
    assert b.dtype == torch.float32
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 0.02, rel  # bf16 matmul inputs: not exact, but close
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
