"""`llmcycle synth --task arithmetic` and `arithmetic-mix`: word problems with worked rationales, for chain-of-thought.

`arithmetic`: each row has `prompt` (the question), `rationale` (the worked steps), `answer` (the number, as
text) and `completion` (rationale, then "The answer is N."), so the same file serves as CoT shots, as test
queries scored on the extracted answer, and as fine-tuning data that teaches the model to reason before answering.

`arithmetic-mix`, for instruction tuning (FLAN's chain-of-thought mixture): the problems of `arithmetic` and
three-step ones, each written twice, in a random order: once where the prompt asks for steps, as `llmcycle
prompt --cot` asks (zero-shot: the question then "Let's think step by step."; few-shot: 1-3 solved problems
with their rationales before it), answered with the steps then "The answer is N."; and once where it does not
(the question alone, or after solved problems without rationales), answered "The answer is N." alone. Tuned on
both, a model reasons when asked to, which is what lets chain-of-thought prompting pay off (Chung et al., 2022).
Rows carry `question`, `answer`, `rationale` and `steps` (whether the prompt asks for them) beside prompt and
completion.

Written for models of a few million parameters, which the embedded ones are. Each step of a rationale repeats the
question's own words before its number ("Amy gets 7 more: 9 + 7 = 16"), so a model that copies from its context
(an induction head: the token after the last occurrence of the current one) gets every operand right; with the
rationale in other words ("After getting 7 more"), the embedded Llama wrote wrong operands in most steps. The numbers
are small (operands up to 12 in sums, products within 5 x 5), so each step is one of a few hundred facts that
tuning can teach; with operands up to 30, facts a tuned model got right were rare, and steps did not help it.
"""

from __future__ import annotations

import random

from .formats import Example

NAMES = ["Amy", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas"]
THINGS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells"]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("basket", "baskets")]


FACTORS = (2, 5)
"""Both factors of a product step: every product is a fact of the 5 x 5 table."""
ADDEND = (1, 9)
"""What a problem adds or keeps beside a product."""


def _factors_and_addend(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(*FACTORS), rng.randint(*FACTORS), rng.randint(*ADDEND)


def _add_then_give(rng: random.Random) -> tuple[str, str, int]:
    name, friend, thing = *rng.sample(NAMES, 2), rng.choice(THINGS)
    start, bought = rng.randint(2, 9), rng.randint(2, 9)
    given = rng.randint(1, start + bought - 1)
    question = (f"{name} has {start} {thing}. {name} gets {bought} more and then gives {given} to {friend}. "
                f"How many {thing} does {name} have now?")
    middle = start + bought
    rationale = (f"{name} has {start} {thing} and gets {bought} more: {start} + {bought} = {middle}. "
                 f"{name} gives {given} to {friend}: {middle} - {given} = {middle - given}.")
    return question, rationale, middle - given


def _groups(rng: random.Random) -> tuple[str, str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    one, many = rng.choice(CONTAINERS)
    count, each, extra = _factors_and_addend(rng)
    question = (f"{name} buys {count} {many} of {thing} with {each} {thing} in each {one}, and finds {extra} more. "
                f"How many {thing} does {name} have?")
    product = count * each
    rationale = (f"{name} buys {count} {many} of {thing} with {each} {thing} in each {one}: {count} * {each} = {product}. "
                 f"{name} finds {extra} more: {product} + {extra} = {product + extra}.")
    return question, rationale, product + extra


def _share(rng: random.Random) -> tuple[str, str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    friends, each, kept = _factors_and_addend(rng)
    total = friends * each + kept
    question = (f"{name} has {total} {thing} and gives {each} to each of {friends} friends. "
                f"How many {thing} does {name} keep?")
    given = friends * each
    rationale = (f"{name} gives {each} to each of {friends} friends: {friends} * {each} = {given}. "
                 f"{name} has {total} {thing}: {total} - {given} = {kept}.")
    return question, rationale, kept


def _difference(rng: random.Random) -> tuple[str, str, int]:
    first, second = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    a, more = rng.randint(2, 12), rng.randint(1, 9)
    question = f"{first} has {a} {thing}. {second} has {more} more than {first}. How many {thing} do they have together?"
    b = a + more
    rationale = (f"{first} has {a} {thing}. {second} has {more} more than {first}: {a} + {more} = {b}. "
                 f"Together they have {a} + {b} = {a + b}.")
    return question, rationale, a + b


def _buy_and_change(rng: random.Random) -> tuple[str, str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    count, price, extra = _factors_and_addend(rng)
    cost = count * price
    total = cost + extra
    paid = (total // 10 + 1 + rng.randint(0, 1)) * 10
    question = (f"{name} buys {count} {thing} at {price} coins each and a bag for {extra} coins, and pays with {paid} coins. "
                f"How many coins does {name} get back?")
    rationale = (f"{name} buys {count} {thing} at {price} coins each: {count} * {price} = {cost}. "
                 f"And a bag for {extra} coins: {cost} + {extra} = {total}. "
                 f"{name} pays with {paid} coins: {paid} - {total} = {paid - total}.")
    return question, rationale, paid - total


def _collect_keep_share(rng: random.Random) -> tuple[str, str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    friends, each, kept = _factors_and_addend(rng)
    total = friends * each + kept
    start = rng.randint(1, total - 1)
    found = total - start
    question = (f"{name} has {start} {thing} and finds {found} more. {name} keeps {kept} and shares the rest equally "
                f"among {friends} friends. How many {thing} does each friend get?")
    rest = total - kept
    rationale = (f"{name} has {start} {thing} and finds {found} more: {start} + {found} = {total}. "
                 f"{name} keeps {kept}: {total} - {kept} = {rest}. "
                 f"The rest is shared among {friends} friends: {rest} / {friends} = {each}.")
    return question, rationale, each


def _save_spend_gift(rng: random.Random) -> tuple[str, str, int]:
    name = rng.choice(NAMES)
    weekly, weeks, gift = _factors_and_addend(rng)
    saved = weekly * weeks
    spent = rng.randint(1, saved - 1)
    question = (f"{name} saves {weekly} coins a week for {weeks} weeks, spends {spent} coins on a book and then gets "
                f"{gift} coins as a gift. How many coins does {name} have now?")
    rationale = (f"{name} saves {weekly} coins a week for {weeks} weeks: {weekly} * {weeks} = {saved}. "
                 f"{name} spends {spent} coins on a book: {saved} - {spent} = {saved - spent}. "
                 f"{name} then gets {gift} coins as a gift: {saved - spent} + {gift} = {saved - spent + gift}.")
    return question, rationale, saved - spent + gift


PROBLEMS = [_add_then_give, _groups, _share, _difference]
"""The `arithmetic` task's problems: two steps each (the quickstart's chain-of-thought test draws from these)."""
MIX_PROBLEMS = [*PROBLEMS, _buy_and_change, _collect_keep_share, _save_spend_gift]
"""`arithmetic-mix` adds three-step problems."""
SHOT_COUNTS = {0: 40, 1: 15, 2: 15, 3: 30}
"""How many solved problems precede the question (weights): the quickstart prompts with 3, `prompt --cot` with any."""


def arithmetic_row(rng: random.Random) -> dict:
    """One word problem: prompt, rationale, answer, and a completion that reasons then answers."""
    question, rationale, answer = rng.choice(PROBLEMS)(rng)
    return {"prompt": f"Question: {question}", "rationale": rationale, "answer": str(answer),
            "completion": f"{rationale} The answer is {answer}."}


def _shot_prompt(rng: random.Random, question: str, steps: bool) -> str:
    """The question as `llmcycle prompt --cot` lays it out, with or without asking for steps."""
    from ..generate.prompting import SHOT_SEPARATOR, ZERO_SHOT_COT, Solved, cot_shot  # deferred: it imports torch

    shots = rng.choices(list(SHOT_COUNTS), weights=list(SHOT_COUNTS.values()))[0]
    if shots == 0:
        return f"Question: {question}" + (ZERO_SHOT_COT if steps else "")
    solved = [rng.choice(PROBLEMS)(rng) for _ in range(shots)]
    rendered = [cot_shot(Example(f"Question: {q}", None, "shot", i), Solved(r, str(a)), steps) for i, (q, r, a) in enumerate(solved)]
    return SHOT_SEPARATOR.join([*rendered, f"Question: {question}"])


def arithmetic_mix_rows(rng: random.Random) -> list[dict]:
    """One problem, twice: asked for steps and answered with them, and asked plainly and answered directly."""
    from ..generate.prompting import ANSWER_LINE

    question, rationale, answer = rng.choice(MIX_PROBLEMS)(rng)
    rows = []
    for steps in rng.sample([True, False], 2):
        completion = f"{rationale} {ANSWER_LINE.format(answer=answer)}" if steps else ANSWER_LINE.format(answer=answer)
        rows.append({"prompt": _shot_prompt(rng, question, steps), "completion": completion, "question": question,
                     "answer": str(answer), "rationale": rationale, "steps": steps})
    return rows
