"""recipes/t5-tasks.yaml at a tiny size: a T5 trained from scratch on three tasks behind prefixes
learns (the training and held-out losses fall; a few dozen steps are too few for exact answers,
which the full recipe's run reports in docs/families/t5.md), reports exact match per task, and the same
recipe fine-tunes a user's T5 directory (model.path, its own tokenizer.json)."""

from pathlib import Path

import torch
import transformers

import zoo
from tests.conftest import randomize_
from zoo.train.config import load_recipe
from zoo.train.data import read_translation_file, save_tokenizer, train_word_tokenizer
from zoo.train.recipes import exact_by_task, finetune

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.progress=none", "train.tensorboard=false", "train.save_every=null", "train.eval_every=null",
        "sample.prompts=[]", "sample.eval_examples=12", "sample.max_new_tokens=10"]  # fmt: skip


def test_the_recipe_learns_every_task_from_scratch(tmp_path):
    recipe = load_recipe(
        ROOT / "recipes" / "t5-tasks.yaml",
        [f"out_dir={tmp_path / 'run'}", *FAST, "train.steps=30", "train.batch_size=16", "train.warmup_steps=10",
         "train.schedule=cosine",
         "data.eval_fraction=0.03", "train.lr=5e-3",
         "model.overrides={d_model: 32, n_layers: 1, n_heads: 2, head_dim: 16, d_ff: 64}"],
    )  # fmt: skip
    result = finetune(recipe, log=lambda *a: None)
    losses = result.train.losses
    assert result.train.status == "finished"
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert set(result.after["exact_by_task"]) == {"reverse", "sort", "add"}
    assert sum(n for _, n in result.after["exact_by_task"].values()) == 12
    run = tmp_path / "run"
    model = zoo.from_pretrained(run / "model")
    assert model.family == "t5" and (run / "loss.png").is_file()
    tok = zoo.load_tokenizer(run / "model")
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id) == (0, 1)


def test_a_users_t5_directory_fine_tunes(tmp_path):
    """model.path: a transformers T5 directory with its tokenizer.json, as a downloaded t5-small is."""
    pairs = read_translation_file(ROOT / "recipes" / "data" / "text_tasks.tsv")
    tok = train_word_tokenizer([text for pair in pairs for text in pair])
    config = transformers.T5Config(vocab_size=tok.vocab_size, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=2,
                                   decoder_start_token_id=0, dropout_rate=0.0)  # fmt: skip
    torch.manual_seed(0)
    user = tmp_path / "t5-small"
    randomize_(transformers.T5ForConditionalGeneration(config)).save_pretrained(user)
    save_tokenizer(tok, user)
    recipe = load_recipe(
        ROOT / "recipes" / "t5-tasks.yaml",
        [f"out_dir={tmp_path / 'run'}", *FAST, "model.name=null", f"model.path={user}", "model.overrides={}",
         "tokenizer=null",
         "train.steps=15", "train.batch_size=16", "train.warmup_steps=5", "train.lr=3e-3",
         "train.schedule=cosine",
         "data.eval_fraction=0.03"],
    )  # fmt: skip
    result = finetune(recipe, log=lambda *a: None)
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert zoo.from_pretrained(tmp_path / "run" / "model").config.d_model == 32


def test_exact_match_by_task_prefix():
    pairs = [("reverse: a b", "b a"), ("sort: 2 1", "1 2"), ("reverse: c d", "d c")]
    assert exact_by_task(pairs, ["b a", "2 1", "d c"]) == {"reverse": (1.0, 2), "sort": (0.0, 1)}
    assert exact_by_task([("no prefix here", "x")], ["x"]) == {}
