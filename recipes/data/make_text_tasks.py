"""Writes text_tasks.tsv: three text-to-text tasks behind T5-style prefixes, for recipes/t5-tasks.yaml.

    reverse: k q m a    ->  a m q k      (3 to 5 letters backwards)
    sort: 7 2 9 4       ->  2 4 7 9      (3 to 5 digits in order)
    add: 4 7 + 8        ->  5 5          (a 2-digit and a 1-digit number, digit by digit)

600 distinct examples per task from a fixed seed, interleaved; run `python recipes/data/make_text_tasks.py`
to write the file again (the same bytes).
"""

import random
import string
from pathlib import Path


def examples(rng: random.Random, task: str) -> tuple[str, str]:
    if task == "reverse":
        letters = rng.choices(string.ascii_lowercase, k=rng.randint(3, 5))
        return " ".join(letters), " ".join(reversed(letters))
    if task == "sort":
        digits = rng.choices(string.digits, k=rng.randint(3, 5))
        return " ".join(digits), " ".join(sorted(digits))
    a, b = rng.randint(10, 99), rng.randint(0, 9)
    return f"{' '.join(str(a))} + {b}", " ".join(str(a + b))


def main(n_per_task: int = 600, seed: int = 0) -> None:
    rng = random.Random(seed)
    tasks = ("reverse", "sort", "add")
    seen = {task: {} for task in tasks}
    while any(len(s) < n_per_task for s in seen.values()):
        for task in tasks:
            if len(seen[task]) < n_per_task:
                source, target = examples(rng, task)
                seen[task].setdefault(source, target)
    pairs = {task: list(seen[task].items()) for task in tasks}
    rows = [f"{task}: {pairs[task][i][0]}\t{pairs[task][i][1]}" for i in range(n_per_task) for task in tasks]
    Path(__file__).with_name("text_tasks.tsv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
