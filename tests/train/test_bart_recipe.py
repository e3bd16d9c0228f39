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


STORY = """The lions sleep in the sun. The keepers feed the old elephants at noon. A small monkey climbs the tall
tree. The penguins swim in the cold water. Visitors watch the zebras run across the field. The giraffes eat
leaves from the high branches."""


def test_the_recipe_learns_to_reconstruct_and_takes_a_checkpoint(tmp_path):
    """Six training sentences (a tiny model memorises them in a few dozen steps; the shipped recipe
    trains on the 4,000 sentences of data/zoo_sentences.txt) and two held out."""
    (tmp_path / "train.txt").write_text(STORY)
    (tmp_path / "eval.txt").write_text("The lions eat meat at night. The keepers clean the penguin pool.")
    recipe = load_recipe(
        ROOT / "recipes" / "bart-denoise.yaml",
        [f"out_dir={tmp_path / 'run'}", *FAST, TINY, "tokenizer=bpe:300", f"data.train={tmp_path / 'train.txt'}",
         f"data.eval={tmp_path / 'eval.txt'}", "data.noise_copies=16", "train.steps=50", "train.batch_size=16",
         "train.warmup_steps=5", "train.lr=1e-2", "train.schedule=cosine", "sample.max_new_tokens=24"],
    )  # fmt: skip
    result = finetune(recipe, log=lambda *a: None)
    losses = result.train.losses
    assert result.train.status == "finished"
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert result.after["eval_accuracy"] > result.before["eval_accuracy"] + 0.1
    before = result.before["reconstruction"]["training sentences, new noise"]
    after = result.after["reconstruction"]["training sentences, new noise"]
    assert after["chrf"] > before["chrf"] + 20, (before["chrf"], after["chrf"], after["reconstructions"])
    assert all("<mask>" in s for s in after["sources"]) and len(after["references"]) == 6
    assert len(result.after["reconstruction"]["held-out sentences"]["references"]) == 2
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
        [f"out_dir={tmp_path / 'again'}", *FAST, "model.name=null", f"model.path={user}", "model.overrides={}",
         "tokenizer=null",
         f"data.train={tmp_path / 'train.txt'}", f"data.eval={tmp_path / 'eval.txt'}", "data.noise_copies=1",
         "train.steps=2", "train.warmup_steps=0", "train.batch_size=8", "train.schedule=cosine",
         "sample.max_new_tokens=24"],
    )  # fmt: skip
    tuned = finetune(again, log=lambda *a: None)
    assert tuned.train.status == "finished"
    # It starts from the trained weights, and reads the checkpoint's own tokenizer and <mask>.
    assert tuned.before["reconstruction"]["training sentences, new noise"]["chrf"] > before["chrf"] + 10


def test_examples_frame_the_text_as_bart_does():
    tok = train_denoising_tokenizer(["The lions sleep in the sun. The keepers feed the lions."] * 5, 280)
    assert [tok.backend.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    (ex,) = denoising_examples(tok, ["The keepers feed the lions in the sun."], max_len=48, seed=0)
    assert ex["labels"].tolist() == tok.encode("The keepers feed the lions in the sun.")  # <s> ... </s>
    assert ex["input_ids"][0] == 0 and ex["input_ids"][-1] == 2 and 4 in ex["input_ids"].tolist()
    short = denoising_examples(tok, ["The keepers feed the lions in the sun."], max_len=5, seed=0, copies=3)
    assert len(short) == 3 and all(len(e["labels"]) == 5 for e in short)
    copies = denoising_examples(tok, [STORY.replace("\n", " ")], max_len=48, seed=0, copies=5)
    assert len({tuple(e["input_ids"].tolist()) for e in copies}) > 1  # each copy its own noise
    assert all(torch.equal(e["labels"], copies[0]["labels"]) for e in copies)
