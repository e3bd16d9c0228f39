"""Recipe paths: relative to the recipe file when written in it, to the shell when typed."""

from pathlib import Path

import pytest

from zoo.train.config import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_a_shipped_recipe_runs_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(ROOT / "recipes" / "gpt2-text.yaml")
    assert Path(recipe.data.train) == ROOT / "recipes" / "data" / "zoo_stories.txt"
    assert recipe.out_dir == "runs/gpt2-text"  # outputs go where the run is started


def test_paths_in_the_file_are_relative_to_it_and_typed_ones_to_the_shell(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "corpus.txt").write_text("one\n\ntwo\n")
    (tmp_path / "recipes" / "r.yaml").write_text("model: {name: gpt2-tiny}\ntokenizer: bpe:300\n"
                                                 "data: {format: text, train: ../corpus.txt}\n")  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Path(load_recipe(tmp_path / "recipes" / "r.yaml").data.train).resolve() == tmp_path / "corpus.txt"
    (elsewhere / "mine.txt").write_text("three\n")
    assert load_recipe(tmp_path / "recipes" / "r.yaml", ["data.train=mine.txt"]).data.train == "mine.txt"
    (tmp_path / "recipes" / "r.yaml").write_text("model: {name: gpt2-tiny}\ndata: {train: nope.txt}\n")
    with pytest.raises(RecipeError, match=r"data.train: file .*recipes/nope.txt' does not exist"):
        load_recipe(tmp_path / "recipes" / "r.yaml")  # named as resolved, beside the recipe


def test_model_path_that_is_neither_a_file_nor_a_cached_repo_is_named(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "r.yaml").write_text("model: {path: someone/model}\ndata: {format: digits}\n")
    with pytest.raises(RecipeError, match=r"model.path: someone/model: no such file or directory, and not a model"):
        load_recipe(tmp_path / "r.yaml")
