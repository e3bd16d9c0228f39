"""recipes/transformer-numbers.yaml at a tiny size: the original Transformer learns to translate
number words (loss falls, BLEU and chrF rise on unseen numbers), and its pieces: the generated
pairs, the word-level tokenizer, the inverse square-root schedule."""

import math
from pathlib import Path

import pytest

import zoo
from zoo.cli import main
from zoo.train.config import RecipeError, load_recipe
from zoo.train.data import number_word_pairs, train_word_tokenizer
from zoo.train.optim import lr_factor
from zoo.train.recipes import finetune, translate

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.progress=none", "train.tensorboard=false", "train.save_every=null", "train.eval_every=null"]


def test_the_recipe_learns_to_translate(tmp_path, capsys):
    recipe = load_recipe(
        ROOT / "recipes" / "transformer-numbers.yaml",
        [f"out_dir={tmp_path / 'run'}", *FAST, "data.n_pairs=400",
         "model.overrides={d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, max_seq_len: 48, dropout: 0.0}",
         "train.steps=40", "train.batch_size=16", "train.warmup_steps=10", "train.lr=5e-3",
         "sample.eval_examples=20", "sample.num_beams=2", "sample.max_new_tokens=20", "sample.prompts=[]"],
    )  # fmt: skip
    result = finetune(recipe, log=lambda *a: None)
    losses = result.train.losses
    assert result.train.status == "finished"
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert result.after["chrf"] > result.before["chrf"] + 10, (result.before["chrf"], result.after["chrf"])
    assert result.after["bleu"] > result.before["bleu"], (result.before["bleu"], result.after["bleu"])
    run = tmp_path / "run"
    model = zoo.from_pretrained(run / "model")
    assert model.family == "transformer" and (run / "loss.png").is_file()
    tok = zoo.load_tokenizer(run / "model")
    assert model.config.pad_token_id == tok.pad_token_id == model.config.decoder_start_token_id
    assert model.config.eos_token_id == tok.eos_token_id
    expected = translate(model, tok, ["twenty-one"], 12, num_beams=2)[0]
    assert main(["generate", str(run), "--prompt", "twenty-one", "--max-new-tokens", "12", "--num-beams", "2"]) == 0
    assert capsys.readouterr().out.strip() == expected  # the CLI translates as the recipe does


def test_number_pairs_are_a_seeded_choice_of_distinct_numbers():
    pairs = number_word_pairs(50, 99, "en", "fr", seed=3)
    assert pairs == number_word_pairs(50, 99, "en", "fr", seed=3) != number_word_pairs(50, 99, "en", "fr", seed=4)
    assert len(set(pairs)) == 50 and ("twenty-one", "vingt et un") in number_word_pairs(100, 99, "en", "fr", 0)
    with pytest.raises(ValueError, match=r"^data.n_pairs: 101 distinct numbers do not fit in \[0, 99\]"):
        number_word_pairs(101, 99, "en", "fr", seed=0)


def test_the_word_tokenizer_gives_back_the_exact_text():
    texts = ["quatre-vingt-dix-neuf", "one thousand, two hundred and thirty-four", "soixante et onze"]
    tok = train_word_tokenizer(texts)
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode([*ids, tok.eos_token_id]) == text
    assert tok.decode(tok.encode("quatre-vingt", add_special_tokens=False)) == "quatre-vingt"
    assert len(tok.encode("quatre-vingt-dix", add_special_tokens=False)) == 5  # words and hyphens


def test_inverse_sqrt_is_the_papers_schedule():
    """lrate = d^-0.5 * min(n^-0.5, n * warmup^-1.5) (eq. 3) = peak * lr_factor, peak = (d * warmup)^-0.5."""
    d, warmup = 512, 4000
    peak = (d * warmup) ** -0.5
    for step in (0, 10, 3999, 4000, 10_000, 100_000):
        n = step + 1
        paper = d**-0.5 * min(n**-0.5, n * warmup**-1.5)
        assert math.isclose(peak * lr_factor(step, 200_000, warmup, "inverse_sqrt", 0.0), paper, rel_tol=1e-12)


def test_translation_data_needs_an_encoder_decoder(tmp_path):
    overrides = [f"out_dir={tmp_path}", "model.name=gpt2-tiny", "data.n_pairs=20", "data.max_number=99"]
    recipe = load_recipe(ROOT / "recipes" / "transformer-numbers.yaml", overrides)
    with pytest.raises(RecipeError, match=r"^data.format: translation data .* trains an encoder-decoder"):
        finetune(recipe, log=lambda *a: None)


@pytest.mark.parametrize("field", ["source_lang", "target_lang"])
def test_an_unknown_number_language_names_its_field(field):
    from zoo.train.data import number_word_pairs

    langs = {"source_lang": "en", "target_lang": "fr", field: "xx"}
    with pytest.raises(ValueError, match=rf"^data\.{field}: num2words cannot write"):
        number_word_pairs(10, 99, seed=0, **langs)
