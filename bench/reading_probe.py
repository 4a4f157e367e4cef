"""Why a model does or does not read: where its answers to reading questions come from, and whether it can look up
a value by its key.

Issue 22 asks both embedded models to answer from retrieved passages. This probe takes the question apart:
- **Reading** (`synth --task reading` rows, a seed the build does not use, those that fit the model's window):
  greedy answers to the answerable questions sorted into right / refused ("The text does not say.") / a wrong
  span of the passage / a value that is not in the passage at all (guessed from the question). Then, teacher-forced,
  the log-probability of the gold answer's first token against the refusal's first token, and of the rest of the
  gold answer once its first token is given: a model that copies but does not find the answer has a low first
  token and a high rest.
- **Lookup**: 3 to 8 `key: value` facts with invented keys of several tokens, then a question about one key, asked
  two ways: "Question: What is K?" and the key and colon alone, exactly as in the list (what an induction head
  completes). Exact match, and the share of answers that are one of the listed values.

Run: `python bench/reading_probe.py --model embedded-llama` (or a model folder; `--rows 150 --lookup-rows 200`).
`--out FILE` keeps each reading answer; `--against FILE` (another run's `--out`, same rows) adds the paired change
in the share answered right, with its 95% bootstrap interval, so that two models are compared on the same questions.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import numpy as np
import torch

from llmcycle.data.synthetic_passages import invented_word
from llmcycle.data.synthetic_reading import UNANSWERABLE, reading_row
from llmcycle.evaluate.stats import Statistic, mean_of_first, paired_change
from llmcycle.generate.engine import GenerationSettings, generate
from llmcycle.models import ModelOptions

LOOKUP_QUESTIONS = ["What is {k}?", "Give the value of {k}.", "{k}?"]


def reading_rows(loaded, count: int, seed: int, max_new_tokens: int) -> list[dict]:
    """Reading rows whose prompt fits the model's window (with room for the answer on a decoder-only model)."""
    rng = random.Random(seed)
    rows = [reading_row(rng) for _ in range(count)]
    window = loaded.context_window or 512
    room = window if loaded.is_encoder_decoder else window - max_new_tokens
    lengths = [len(ids) for ids in loaded.tokenizer([row["prompt"] for row in rows])["input_ids"]]
    return [row for row, length in zip(rows, lengths) if length <= room]


def lookup_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        keys: list[str] = []
        while len(keys) < rng.randrange(3, 9):
            key = invented_word(rng, rng.choice([2, 3]))
            keys += [key] if key not in keys else []
        values = [rng.choice([invented_word(rng, rng.choice([2, 3])), str(rng.randrange(2, 9999))]) for _ in keys]
        facts = "\n".join(f"{key}: {value}" for key, value in zip(keys, values))
        asked = rng.randrange(len(keys))
        question = rng.choice(LOOKUP_QUESTIONS).format(k=keys[asked])
        rows.append({"question": f"{facts}\n\nQuestion: {question}\nAnswer:", "induction": f"{facts}\n\n{keys[asked]}:",
                     "key": keys[asked], "answer": values[asked], "values": values})
    return rows


SOURCES = ("right", "refused", "wrong span of the passage", "not in the passage")


def answer_source(row: dict, answer: str) -> str:
    if answer == row["completion"]:
        return "right"
    if answer == UNANSWERABLE:
        return "refused"
    return "wrong span of the passage" if answer and answer in row["prompt"] else "not in the passage"


def paired_right(kept: list[dict], path: str) -> str:
    """The change in the share answered right against another run's `--out` file, on the same questions."""
    other = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if [row["prompt"] for row in other] != [row["prompt"] for row in kept]:
        raise SystemExit(f"{path}: not the same reading questions (run both with the same --rows and --seed)")
    right = lambda rows: Statistic(np.array([[row["source"] == "right"] for row in rows], dtype=float), mean_of_first)
    change = paired_change(right(other), right(kept))
    low, high = change["ci95"]
    return f"right against {path}: {change['absolute']:+.3f} [{low:+.3f}, {high:+.3f}] (paired, {len(kept)} questions)"


@torch.inference_mode()
def token_logprobs(loaded, prompt: str, completion: str) -> list[float]:
    """Teacher-forced log-probability of each token of `completion` after `prompt`."""
    tokenizer, model = loaded.tokenizer, loaded.model
    prompt_ids = tokenizer(prompt)["input_ids"]
    target = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if loaded.is_encoder_decoder:
        logits = model(input_ids=torch.tensor([prompt_ids]), labels=torch.tensor([target])).logits[0]
        scores = logits.log_softmax(-1)
        return [scores[i, token].item() for i, token in enumerate(target)]
    logits = model(input_ids=torch.tensor([prompt_ids + target])).logits[0]
    scores = logits.log_softmax(-1)
    return [scores[len(prompt_ids) - 1 + i, token].item() for i, token in enumerate(target)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded-llama")
    parser.add_argument("--rows", type=int, default=150, help="reading rows drawn (those that fit the window are used)")
    parser.add_argument("--lookup-rows", type=int, default=200, help="key-value lookup lists (0: no lookup)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", help="JSONL file for each reading question's answer and where it came from")
    parser.add_argument("--against", help="another run's --out file: the paired change in the share answered right")
    args = parser.parse_args()
    if args.against and not Path(args.against).is_file():
        raise SystemExit(f"--against {args.against}: no such file")
    if args.out and (not Path(args.out).parent.is_dir() or args.out == args.against):
        raise SystemExit(f"--out {args.out}: its folder does not exist, or it is the --against file")
    loaded = ModelOptions(args.model).load()
    settings = GenerationSettings(max_new_tokens=16, batch_size=32)

    rows = [row for row in reading_rows(loaded, args.rows, args.seed, settings.max_new_tokens) if row["answerable"]]
    answers = [answer.strip() for answer in generate(loaded, [row["prompt"] for row in rows], settings)]
    kept = [{"prompt": row["prompt"], "gold": row["completion"], "answer": answer, "source": answer_source(row, answer)}
            for row, answer in zip(rows, answers)]
    sources = {source: sum(row["source"] == source for row in kept) for source in SOURCES}
    if args.out:
        Path(args.out).write_text("".join(json.dumps(row) + "\n" for row in kept))
    first_gold, first_refusal, rest_gold = [], [], []
    for row in rows:
        gold = token_logprobs(loaded, row["prompt"], row["completion"])
        first_gold.append(gold[0])
        first_refusal.append(token_logprobs(loaded, row["prompt"], UNANSWERABLE)[0])
        if len(gold) > 1:
            rest_gold.append(sum(gold[1:]))

    lookups = lookup_rows(args.lookup_rows, args.seed + 1)
    lookup = {}
    for form in ("question", "induction") if lookups else ():  # --lookup-rows 0 leaves the lookup out
        said = [answer.strip() for answer in generate(loaded, [row[form] for row in lookups], settings)]
        lookup[form] = (sum(a == row["answer"] for a, row in zip(said, lookups)) / len(lookups),
                        sum(a in row["values"] for a, row in zip(said, lookups)) / len(lookups))

    print(f"\n{args.model}: {len(rows)} answerable reading questions (seed {args.seed})")
    print("| answers | " + " | ".join(sources) + " |\n|---|" + "---|" * len(sources))
    print("| count | " + " | ".join(str(v) for v in sources.values()) + " |")
    if args.against:
        print(paired_right(kept, args.against))
    print(f"\nteacher-forced, median log-probability: gold's first token {statistics.median(first_gold):.2f}, the refusal's first "
          f"token {statistics.median(first_refusal):.2f}, the rest of the gold answer {statistics.median(rest_gold):.3f}; "
          f"gold first token above the refusal's on {sum(g > r for g, r in zip(first_gold, first_refusal))} of {len(rows)}")
    if not lookups:
        return
    print(f"\nlookup, {len(lookups)} lists of 3-8 facts:\n| prompt ends with | exact match | answer is a listed value |\n|---|---|---|")
    for form, label in (("question", "Question: ... Answer:"), ("induction", "the key and a colon")):
        print(f"| {label} | {lookup[form][0]:.3f} | {lookup[form][1]:.3f} |")


if __name__ == "__main__":
    main()
