"""recipes/bart-denoise.yaml at a tiny size: a BART trained from scratch on text infilling learns to
reconstruct (loss falls, chrF rises), and the same recipe fine-tunes a checkpoint directory in
transformers' layout with its own tokenizer (as a downloaded bart-base)."""

from pathlib import Path

import torch

import zoo
from zoo.train.config import load_recipe
from zoo.train.data import save_tokenizer
from zoo.train.denoising import denoising_examples, train_denoising_tokenizer
from zoo.train.recipes import finetune

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.progress=none", "train.tensorboard=false", "train.save_every=null", "train.eval_every=null"]
TINY = ("model.overrides={d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, n_decoder_layers: 1, n_decoder_heads: 2, "
        "decoder_d_ff: 64, max_seq_len: 48, dropout: 0.0, attn_dropout: 0.0, act_dropout: 0.0, "
        "decoder_start_token_id: 2, forced_bos_token_id: 0, forced_eos_token_id: 2}")  # fmt: skip


def test_the_recipe_learns_to_reconstruct_and_takes_a_checkpoint(tmp_path):
    recipe = load_recipe(
        ROOT / "recipes" / "bart-denoise.yaml",
        [f"out_dir={tmp_path / 'run'}", *FAST, TINY, "tokenizer=bpe:300", "data.noise_copies=2", "train.steps=40",
         "train.batch_size=16", "train.warmup_steps=5", "train.lr=5e-3", "sample.eval_examples=8",
         "sample.max_new_tokens=40"],
    )  # fmt: skip
    result = finetune(recipe, log=lambda *a: None)
    losses = result.train.losses
    assert result.train.status == "finished"
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert result.after["eval_accuracy"] > result.before["eval_accuracy"] + 0.1
    for name in ("held-out sentences", "training sentences, new noise"):
        before, after = result.before["reconstruction"][name], result.after["reconstruction"][name]
        assert after["chrf"] > before["chrf"] + 5, (name, before["chrf"], after["chrf"])
        assert all("<mask>" in s for s in after["sources"]) and len(after["references"]) == 8
    run = tmp_path / "run"
    assert (run / "loss.png").is_file()
    model = zoo.from_pretrained(run / "model")
    assert model.family == "bart" and model.config.forced_bos_token_id == 0

    # A checkpoint directory in transformers' layout with its tokenizer, as a user's bart-base.
    user = tmp_path / "user-bart"
    model.save_pretrained(user)
    save_tokenizer(zoo.load_tokenizer(run / "model"), user)
    again = load_recipe(
        ROOT / "recipes" / "bart-denoise.yaml",
        [f"out_dir={tmp_path / 'again'}", *FAST, "model.name=null", f"model.path={user}", "tokenizer=null",
         "data.noise_copies=1", "train.steps=2", "train.batch_size=8", "sample.eval_examples=4",
         "sample.max_new_tokens=40"],
    )  # fmt: skip
    tuned = finetune(again, log=lambda *a: None)
    assert tuned.train.status == "finished"
    assert tuned.before["reconstruction"]["held-out sentences"]["chrf"] > 0.5 * after["chrf"]  # it starts trained


def test_examples_frame_the_text_as_bart_does():
    tok = train_denoising_tokenizer(["The lions sleep in the sun. The keepers feed the lions."] * 5, 280)
    assert [tok.backend.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    (ex,) = denoising_examples(tok, ["The keepers feed the lions in the sun."], max_len=48, seed=0)
    assert ex["labels"].tolist() == tok.encode("The keepers feed the lions in the sun.")  # <s> ... </s>
    assert ex["input_ids"][0] == 0 and ex["input_ids"][-1] == 2 and 4 in ex["input_ids"].tolist()
    short = denoising_examples(tok, ["The keepers feed the lions in the sun."], max_len=5, seed=0, copies=3)
    assert len(short) == 3 and all(len(e["labels"]) == 5 for e in short)
    assert not torch.equal(short[0]["input_ids"], short[1]["input_ids"]) or len(short[0]["input_ids"]) < 4
