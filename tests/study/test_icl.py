"""`zoo study`: the registry and its key=value checks, and the ICL study on the real SmolLM2 GGUF
(loaded once for the module; a handful of questions at 0 and 1 shots)."""

import csv
import json

import pytest

from zoo.cli import main
from zoo.study import StudyError, get_study, icl, list_studies, study_settings

# One question of three tasks whose one-shot answers are single words, at 0 and 1 shots.
SMALL = dict(questions_per_task=1, shots=[0, 1], tasks=["sentiment", "plural", "opposite"], max_new_tokens=10)


@pytest.fixture(scope="module")
def smollm2():
    return icl.load_model(icl.Settings().model)


def test_icl_is_registered_with_its_defaults():
    assert "icl" in list_studies()
    settings = study_settings("icl")
    assert settings == icl.Settings() and settings.shots == [0, 1, 2, 4, 8]
    assert get_study("icl").run is icl.run


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["shot=1"], r"^shot: unknown key; did you mean shots\?"),
        (["batch_size=many"], r"^batch_size: expected an integer, got 'many'"),
        (["shots"], r"^shots: settings are key=value, e.g. shots=\[0,1,2\]"),
    ],
)
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        study_settings("icl", overrides)


def test_unknown_study_suggests_a_name(capsys):
    with pytest.raises(StudyError, match=r"^study: unknown study 'icx'; did you mean icl\?"):
        get_study("icx")
    assert main(["study", "icx"]) == 2
    assert "did you mean icl?" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(shots=[0, 15]), r"^shots: 15 demonstrations need more questions than task 'animal_sound' has \(15"),
        (dict(tasks=["poetry"]), r"^tasks: \['poetry'\] are not in"),
        (dict(questions_per_task=-1), r"^questions_per_task: must be >= 0"),
    ],
)
def test_settings_checked_against_the_data(overrides, message):
    settings = icl.Settings(**overrides)
    with pytest.raises(StudyError, match=message):
        icl._check(settings, icl.load_questions(settings.data))


def test_questions_get_their_tasks(tmp_path):
    counts = {}
    for q in icl.load_questions(icl.Settings().data):
        counts[q.task] = counts.get(q.task, 0) + 1
    assert counts == {"capital": 35, "opposite": 30, "sentiment": 30, "plural": 20, "animal_sound": 15,
                      "arithmetic": 30}  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Who wrote Hamlet?", "response": "Shakespeare"}\n')
    with pytest.raises(StudyError, match=r"^data: .*bad.jsonl:1: prompt 'Who wrote Hamlet\?' matches no task"):
        icl.load_questions(str(bad))


def test_scoring():
    assert icl.normalise(' "Paris." ') == "paris"
    assert icl.contains("The capital of France is Paris.", "Paris")
    assert not icl.contains("Parisian food", "Paris")
    assert icl.contains("It goes cock-a-doodle-doo!", "cock-a-doodle-doo")


def test_prompts_hold_demonstrations_of_the_same_task_only(smollm2):
    _, tokenizer = smollm2
    questions = icl.load_questions(icl.Settings().data)
    q, *demos = [x for x in questions if x.task == "plural"][:3]
    text = tokenizer.decode(icl.build_prompt(tokenizer, demos, q), skip_special_tokens=False)
    assert text.count("<|im_start|>user") == 3 and text.count("<|im_start|>assistant") == 3  # 2 answered + the open one
    assert all(d.prompt in text and f"{d.answer}<|im_end|>" in text for d in demos)
    assert text.rstrip().endswith(f"{q.prompt}<|im_end|>\n<|im_start|>assistant")
    with_instruction = tokenizer.decode(icl.build_prompt(tokenizer, [], q, "Answer with one word."), False)
    assert "Answer with one word." in with_instruction and "SmolLM" not in with_instruction


def test_real_weights_one_demonstration_teaches_the_answer_format(smollm2):
    """Zero-shot, SmolLM2 answers in sentences; one solved example makes it answer in a word or two."""
    model, tokenizer = smollm2
    settings = icl.Settings(**SMALL)
    rows = icl.evaluate(
        model, tokenizer, icl._check(settings, icl.load_questions(settings.data)), settings, log=lambda line: None
    )
    assert len(rows) == 6 and {r["shots"] for r in rows} == {0, 1}
    assert all(r["answer"] for r in rows)
    assert all(r["contains"] for r in rows if r["exact"])
    words = {k: sum(len(r["answer"].split()) for r in rows if r["shots"] == k) / 3 for k in (0, 1)}
    assert words[1] < words[0] / 2, words
    tokens = {k: min(r["prompt_tokens"] for r in rows if r["shots"] == k) for k in (0, 1)}
    assert tokens[1] > tokens[0]


def test_cli_writes_summary_csv_and_plot(smollm2, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(icl, "load_model", lambda path: smollm2)
    out = tmp_path / "icl"
    assert (
        main(["study", "icl", "questions_per_task=1", "shots=[0,1]", "tasks=[sentiment,plural]", "--out", str(out)])
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == "icl" and summary["settings"]["shots"] == [0, 1]
    assert summary["questions"] == 2 and summary["questions_per_task"] == {"plural": 1, "sentiment": 1}
    with (out / "answers.csv").open() as f:
        answers = list(csv.DictReader(f))
    assert len(answers) == 4
    for k in ("0", "1"):
        hits = [a["exact"] == "True" for a in answers if a["shots"] == k]
        assert summary["accuracy"][k]["exact"] == sum(hits) / len(hits)
    assert (out / "icl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "accuracy.csv").exists() and "| shots |" in (out / "report.md").read_text()
