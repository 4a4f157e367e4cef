"""`llmcycle synth --task arithmetic`: word problems with worked rationales, for trying chain-of-thought offline.

Each row has `prompt` (the question), `rationale` (the worked steps), `answer` (the number, as text) and
`completion` (rationale, then "The answer is N."), so the same file serves as CoT shots, as test queries scored
on the extracted answer, and as fine-tuning data that teaches the model to reason before answering.
"""

from __future__ import annotations

import random

NAMES = ["Amy", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas"]
THINGS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells"]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("basket", "baskets")]


def _add_then_give(rng: random.Random) -> tuple[str, str, int]:
    name, friend, thing = *rng.sample(NAMES, 2), rng.choice(THINGS)
    start, bought = rng.randint(2, 20), rng.randint(2, 20)
    given = rng.randint(1, start + bought - 1)
    question = (f"{name} has {start} {thing}. {name} gets {bought} more and then gives {given} to {friend}. "
                f"How many {thing} does {name} have now?")
    middle = start + bought
    rationale = (f"{name} starts with {start} {thing}. After getting {bought} more, {name} has {start} + {bought} = {middle}. "
                 f"After giving {given} away, {name} has {middle} - {given} = {middle - given}.")
    return question, rationale, middle - given


def _groups(rng: random.Random) -> tuple[str, str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    one, many = rng.choice(CONTAINERS)
    count, each, extra = rng.randint(2, 9), rng.randint(2, 12), rng.randint(0, 9)
    question = (f"{name} buys {count} {many} of {thing} with {each} {thing} in each {one}, and finds {extra} more. "
                f"How many {thing} does {name} have?")
    product = count * each
    rationale = f"{count} {many} with {each} each make {count} * {each} = {product} {thing}. With {extra} more, that is {product} + {extra} = {product + extra}."
    return question, rationale, product + extra


def _share(rng: random.Random) -> tuple[str, str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    friends, each, kept = rng.randint(2, 6), rng.randint(2, 10), rng.randint(1, 9)
    total = friends * each + kept
    question = (f"{name} has {total} {thing} and gives {each} to each of {friends} friends. "
                f"How many {thing} does {name} keep?")
    given = friends * each
    rationale = f"{name} gives away {friends} * {each} = {given} {thing}. {name} keeps {total} - {given} = {kept}."
    return question, rationale, kept


def _difference(rng: random.Random) -> tuple[str, str, int]:
    first, second = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    a, more = rng.randint(3, 30), rng.randint(1, 15)
    question = f"{first} has {a} {thing}. {second} has {more} more than {first}. How many {thing} do they have together?"
    b = a + more
    rationale = f"{second} has {a} + {more} = {b} {thing}. Together they have {a} + {b} = {a + b}."
    return question, rationale, a + b


PROBLEMS = [_add_then_give, _groups, _share, _difference]


def arithmetic_row(rng: random.Random) -> dict:
    """One word problem: prompt, rationale, answer, and a completion that reasons then answers."""
    question, rationale, answer = rng.choice(PROBLEMS)(rng)
    return {"prompt": f"Question: {question}", "rationale": rationale, "answer": str(answer),
            "completion": f"{rationale} The answer is {answer}."}
