"""Writes zoo_sentences.txt: 4,000 distinct template sentences about zoo animals (seeded, so the
file is reproducible), the text of recipes/bart-denoise.yaml. Varied enough that a decoder cannot
memorise them: denoising then has to read the source (see docs/families/bart.md).

    .venv/bin/python recipes/data/make_zoo_sentences.py
"""

import random
from pathlib import Path

from num2words import num2words

rng = random.Random(0)
animals = [
    "elephants",
    "otters",
    "zebras",
    "penguins",
    "kangaroos",
    "lions",
    "giraffes",
    "tortoises",
    "parrots",
    "hippos",
    "seals",
    "wolves",
    "camels",
    "lemurs",
    "owls",
    "foxes",
]
verbs = ["eat", "carry", "watch", "hide", "find", "chase", "count", "share", "collect", "drop"]
things = [
    "apples",
    "stones",
    "branches",
    "fish",
    "leaves",
    "carrots",
    "shells",
    "buckets",
    "sticks",
    "melons",
    "nuts",
    "flowers",
]
places = [
    "by the pool",
    "near the gate",
    "under the tree",
    "in the barn",
    "on the hill",
    "behind the fence",
    "at the pond",
    "in the sand",
]
times = [
    "in the morning",
    "at noon",
    "every evening",
    "after the rain",
    "before lunch",
    "at night",
    "on sundays",
    "in winter",
]
adjs = ["small", "old", "young", "tired", "happy", "hungry", "clever", "noisy"]
keepers = ["Anna", "Ben", "Carla", "David", "Ella", "Farid", "Grace", "Hugo"]
out: dict[str, None] = {}  # insertion order: the file does not depend on hash seeds
while len(out) < 4000:
    n, k = rng.randint(2, 19), rng.randint(2, 99)
    s = rng.choice(
        [
            f"The {num2words(n)} {rng.choice(adjs)} {rng.choice(animals)} {rng.choice(verbs)} "
            f"{num2words(k)} {rng.choice(things)} {rng.choice(places)}.",
            f"{rng.choice(keepers)} gives the {rng.choice(animals)} {num2words(k)} {rng.choice(things)} "
            f"{rng.choice(times)}.",
            f"{rng.choice(times).capitalize()}, the {rng.choice(adjs)} {rng.choice(animals)} "
            f"{rng.choice(verbs)} {rng.choice(things)} {rng.choice(places)}.",
        ]
    )
    out[s] = None
open(Path(__file__).with_name("zoo_sentences.txt"), "w").write(
    "\n".join(sorted(out, key=lambda _: rng.random())) + "\n"
)
