"""Recipe configs fail before training, naming the key: typos, wrong types, missing files."""

from pathlib import Path

import pytest

from zoo.cli import main
from zoo.train.config import RecipeError, load_recipe, recipe_from_dict

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes").glob("*.yaml"))
TEXT = {"model": {"name": "gpt2-tiny"}, "tokenizer": "bpe:300", "data": {"format": "text"}}


def _recipe(tmp_path, **sections):
    text = tmp_path / "train.txt"
    text.write_text("one two three\n\nfour five six\n")
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in TEXT.items()}
    data["data"]["train"] = str(text)
    for key, value in sections.items():
        data[key] = value
    return data


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    recipe = load_recipe(path)
    assert recipe.train.steps > 0 and recipe.out_dir.startswith("runs/")


def test_overrides_with_dotted_keys_and_yaml_values(tmp_path):
    recipe = recipe_from_dict(
        _recipe(tmp_path),
        ["train.lr=1e-3", "train.grad_clip=null", "lora.enabled=true", "lora.targets=[attn.q_proj]",
         "model.overrides.n_layers=1", "train.steps=7"],
    )  # fmt: skip
    assert recipe.train.lr == 1e-3 and isinstance(recipe.train.lr, float)
    assert recipe.train.grad_clip is None and recipe.lora.enabled and recipe.lora.targets == ["attn.q_proj"]
    assert recipe.model.overrides == {"n_layers": 1} and recipe.train.steps == 7


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=0.1"], r"train\.lrr: unknown key; did you mean train\.lr\?"),
        (["trian.lr=0.1"], r"trian: unknown key; did you mean train\?"),
        (["lora.rank=4"], r"lora\.rank: unknown key; keys: enabled, r, alpha"),
        (["train.steps=ten"], r"train\.steps: expected an integer, got 'ten' \(str\)"),
        (["train.steps=2.5"], r"train\.steps: expected an integer, got 2\.5 \(float\)"),
        (["train.lr=fast"], r"train\.lr: expected a number, got 'fast'"),
        (["train.debug=maybe"], r"train\.debug: expected true or false, got 'maybe'"),
        (["train.precision=bf61"], r"train\.precision: unknown value 'bf61' \(did you mean 'bf16'\?\)"),
        (["train.steps=0"], r"train\.steps: must be at least 1"),
        (["data.train=/no/such/file.txt"], r"data\.train: file '/no/such/file\.txt' does not exist"),
        (["model.path=/no/such/dir"], r"model: give exactly one of model\.name .* or model\.path"),
        (["lora.targets={a: 1}"], r"lora\.targets: expected a list"),
        (["train.lr"], r"train\.lr: overrides are key=value"),
        (["train=3"], r"train: expected a mapping"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, overrides, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(_recipe(tmp_path), overrides)


def test_missing_model_path_and_chat_file(tmp_path):
    base = _recipe(tmp_path, model={"path": "/no/such/model.gguf"})
    with pytest.raises(RecipeError, match=r"model\.path: /no/such/model\.gguf: no such file or directory"):
        recipe_from_dict(base)
    chat = _recipe(tmp_path, data={"format": "chat", "train": str(tmp_path / "absent.jsonl")})
    with pytest.raises(RecipeError, match=r"data\.train: file .*absent\.jsonl' does not exist"):
        recipe_from_dict(chat)


def test_paths_relative_to_the_recipe_file(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.txt").write_text("hello\n")
    (tmp_path / "r.yaml").write_text("model: {name: gpt2-tiny}\ntokenizer: bpe:300\ndata: {train: data/t.txt}\n")
    monkeypatch.chdir("/")
    assert load_recipe(tmp_path / "r.yaml").data.train == str(tmp_path / "data" / "t.txt")


def test_cli_reports_a_recipe_error_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's default out_dir, runs/default, would be made here
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: gpt2-tiny}\ndata: {train: missing.txt}\n")
    assert main(["finetune", str(recipe), "train.stpes=3"]) == 2
    assert "train.stpes: unknown key; did you mean train.steps?" in capsys.readouterr().err
    assert main(["finetune", str(recipe)]) == 2
    assert f"data.train: file '{tmp_path / 'missing.txt'}' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_exits_1_with_the_report_when_training_diverges(tmp_path, capsys, monkeypatch):
    from zoo.train import Trainer, TrainingDiverged

    def diverge(self):
        raise TrainingDiverged("training stopped: NaN/Inf at step 1", "first module whose output ...", None)

    monkeypatch.setattr(Trainer, "train_step", diverge)
    text = tmp_path / "t.txt"
    text.write_text("a b c d e f g h\n\ni j k l m n\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"out_dir: {tmp_path / 'run'}\nmodel: {{name: gpt2-tiny}}\ntokenizer: bpe:270\n"
        f"data: {{train: {text}, max_len: 8}}\ntrain: {{steps: 2, batch_size: 2, progress: none}}\n"
    )
    assert main(["finetune", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "NaN/Inf at step 1" in err and "first module whose output" in err
