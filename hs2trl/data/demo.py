"""The demo datasets: small data that hs2trl writes itself, so that the demos run anywhere (real data needs the Hub).

- `demo:helpsteer2`: HelpSteer2-format rows generated from templates: factual and arithmetic questions, each answered
  in two of six styles whose attribute scores follow what the HelpSteer2 guidelines would give them (a wrong answer is
  unhelpful and incorrect, a padded one is verbose, a word salad is incoherent...). A quarter of the prompts are
  multi-turn, written with HelpSteer2's `<extra_id_1>` markers. Deterministic (seeded).
- `demo:helpsteer2-preference`: the same response pairs in HelpSteer2-Preference's format (one file, both splits, a
  `split` column as the real `preference.jsonl.gz`). Its strengths are DERIVED, not annotated: clip(helpfulness of
  response 2 - helpfulness of response 1, -3, 3), so negative means response 1 is better, as in the real data, and
  equal helpfulness is a tie (strength 0). Real HelpSteer2-Preference strengths are human judgements of the pair,
  which do not follow the helpfulness difference one to one (the paper's Figure 1); these only let the pipeline run.
"""

from __future__ import annotations

import random
from pathlib import Path

from hs2trl.data.records import write_jsonl
from hs2trl.runtime.cache import cache_dir
from hs2trl.runtime.errors import Hs2Error

DEMO_DATASET = "demo:helpsteer2"
DEMO_PREFERENCE_DATASET = "demo:helpsteer2-preference"
DEMO_DATASETS = (DEMO_DATASET, DEMO_PREFERENCE_DATASET)
SPLIT_SIZES = {"train": 160, "validation": 40}  # prompts; two responses each
# HelpSteer2-Preference's `split` values (its validation rows say 'val'; `data.sources` reads both spellings).
PREFERENCE_SPLIT_VALUES = {"train": "train", "validation": "val"}
MAX_STRENGTH = 3  # HelpSteer2-Preference's scale is -3..3
DERIVED_NOTE = ("demo:helpsteer2-preference strengths are derived, not annotated: clip(helpfulness_2 - helpfulness_1, "
                f"-{MAX_STRENGTH}, {MAX_STRENGTH}) of the demo HelpSteer2 pair (negative: response 1 better; equal "
                "helpfulness: a tie)")

CAPITALS = [
    ("France", "Paris", "Lyon"), ("Japan", "Tokyo", "Osaka"), ("Canada", "Ottawa", "Toronto"),
    ("Australia", "Canberra", "Sydney"), ("Brazil", "Brasilia", "Rio de Janeiro"), ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"), ("Germany", "Berlin", "Munich"), ("Egypt", "Cairo", "Alexandria"),
    ("Kenya", "Nairobi", "Mombasa"), ("India", "New Delhi", "Mumbai"), ("Turkey", "Ankara", "Istanbul"),
    ("Norway", "Oslo", "Bergen"), ("Peru", "Lima", "Cusco"), ("Vietnam", "Hanoi", "Ho Chi Minh City"),
    ("Morocco", "Rabat", "Casablanca"), ("Chile", "Santiago", "Valparaiso"), ("Poland", "Warsaw", "Krakow"),
]
FACTS = [
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has six legs.",
     "Spiders are arachnids, not insects, which is why they have eight legs instead of six."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide.", "Plants absorb helium.",
     "They use it in photosynthesis, together with water and sunlight, to make sugar and release oxygen."),
    ("What is the boiling point of water at sea level in Celsius?", "Water boils at 100 degrees Celsius.",
     "Water boils at 50 degrees Celsius.", "At higher altitudes the air pressure is lower, so it boils sooner."),
    ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun.",
     "Neptune is the closest planet to the Sun.", "It completes one orbit in about 88 Earth days."),
    ("How many days are in a leap year?", "A leap year has 366 days.", "A leap year has 360 days.",
     "The extra day, February 29, keeps the calendar aligned with the Earth's orbit."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest.", "The Arctic Ocean is the largest.",
     "It covers about a third of the planet's surface."),
]
FILLER = [
    "This is a question that many people ask.", "It is worth thinking about carefully.",
    "There are many interesting things to say about it.", "Let me explain this in some detail.",
    "Many sources agree on this point.", "I hope this helps you with your question.",
]
# style -> (helpfulness, correctness, coherence, complexity, verbosity)
STYLES = {
    "concise": (4, 4, 4, 1, 1),
    "detailed": (4, 4, 4, 2, 3),
    "padded": (2, 4, 3, 1, 4),
    "hedged": (2, 3, 3, 1, 1),
    "wrong": (0, 0, 3, 1, 1),
    "salad": (0, 1, 0, 1, 2),
}


def _questions(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(question, right answer, wrong answer, one detail sentence)."""
    qs = [(f"What is the capital of {c}?", f"The capital of {c} is {cap}.", f"The capital of {c} is {wrong}.",
           f"{cap} is home to the national government of {c}.") for c, cap, wrong in CAPITALS]
    qs += FACTS
    for _ in range(200):
        a, b = rng.randint(11, 89), rng.randint(11, 89)
        qs.append((f"What is {a} + {b}?", f"{a} + {b} = {a + b}.",
                   f"{a} + {b} = {a + b + rng.choice([-10, -1, 1, 10])}.",
                   f"Adding the tens gives {a // 10 * 10 + b // 10 * 10} and the ones give {a % 10 + b % 10}."))
    return list({q[0]: q for q in qs}.values())  # each question once


def _respond(style: str, right: str, wrong: str, detail: str, rng: random.Random) -> str:
    if style == "concise":
        return right
    if style == "detailed":
        return f"{right} {detail}"
    if style == "padded":
        return " ".join(rng.sample(FILLER, 4)) + f" {right} " + " ".join(rng.sample(FILLER, 3))
    if style == "hedged":
        return f"I am not completely sure, but I think: {right[0].lower()}{right[1:]}"
    if style == "wrong":
        return wrong
    words = (right + " " + detail).split()
    rng.shuffle(words)
    return " ".join(words)


def demo_rows(split: str, seed: int = 0) -> list[dict]:
    questions = _questions(random.Random(seed))
    random.Random(seed).shuffle(questions)
    start = 0 if split == "train" else SPLIT_SIZES["train"]  # disjoint prompts
    rng = random.Random(f"{seed}-{split}")
    rows = []
    for question, right, wrong, detail in questions[start : start + SPLIT_SIZES[split]]:
        prompt = question
        if rng.random() < 0.25:  # multi-turn, HelpSteer2 style
            prompt = ("Hello! I have a quick question.\n<extra_id_1>Assistant\nOf course, what would you like to "
                      f"know?\n<extra_id_1>User\n{question}")
        for style in rng.sample(sorted(STYLES), 2):
            scores = dict(zip(("helpfulness", "correctness", "coherence", "complexity", "verbosity"), STYLES[style]))
            rows.append({"prompt": prompt, "response": _respond(style, right, wrong, detail, rng), **scores})
    return rows


def derived_strength(helpfulness_1: int, helpfulness_2: int) -> int:
    """A demo pair's preference strength: the helpfulness difference in HelpSteer2-Preference's sign (positive:
    response 2 better), clipped to its -3..3 scale."""
    return max(-MAX_STRENGTH, min(MAX_STRENGTH, helpfulness_2 - helpfulness_1))


def demo_preference_rows(seed: int = 0) -> list[dict]:
    """The demo HelpSteer2 pairs (consecutive rows share a prompt) as HelpSteer2-Preference rows, train then
    validation, with each response's helpfulness kept beside the strength derived from them."""
    rows = []
    for split, value in PREFERENCE_SPLIT_VALUES.items():
        responses = demo_rows(split, seed)
        for first, second in zip(responses[::2], responses[1::2], strict=True):
            strength = derived_strength(first["helpfulness"], second["helpfulness"])
            rows.append({"split": value, "prompt": first["prompt"], "response_1": first["response"],
                         "response_2": second["response"], "preference_strength": strength,
                         "helpfulness_1": first["helpfulness"], "helpfulness_2": second["helpfulness"],
                         "preference_statement": DERIVED_NOTE})
    return rows


def demo_dataset_file(split: str) -> str:
    """Write (once) and return the demo split as a HelpSteer2-format .jsonl file."""
    _check_split(DEMO_DATASET, split)
    return _written(f"{split}.jsonl", lambda: demo_rows(split))


def demo_preference_file() -> str:
    """Write (once) and return `demo:helpsteer2-preference`: both splits in one .jsonl file, told apart by `split`."""
    return _written("preference.jsonl", demo_preference_rows)


def demo_source_file(source: str, split: str) -> str:
    """The file behind a `demo:` dataset name (for `split`; the preference file holds both splits)."""
    if source not in DEMO_DATASETS:
        raise Hs2Error(f"{source}: unknown demo dataset (known: {', '.join(DEMO_DATASETS)})")
    _check_split(source, split)
    return demo_dataset_file(split) if source == DEMO_DATASET else demo_preference_file()


def _check_split(source: str, split: str) -> None:
    if split not in SPLIT_SIZES:
        raise Hs2Error(f"{source}: no split '{split}' (splits: {', '.join(SPLIT_SIZES)})")


def _written(name: str, rows) -> str:
    """The cached demo file `name`, written from `rows()` first when it is not there (atomically: a crash never
    leaves half a file)."""
    path = cache_dir() / "data" / "demo-helpsteer2" / name
    if not path.exists():
        tmp = Path(str(path) + ".tmp")
        write_jsonl(tmp, rows())
        tmp.replace(path)
    return str(path)
