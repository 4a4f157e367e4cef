"""Copying from context: the `copy` instruction task, and corpus documents that repeat random spans.

Why: a decoder-only model copies a name from its prompt with induction heads (Olsson et al., 2022: attend to the
token after an earlier occurrence of the current token, and predict it), and those form in pre-training only
when copying pays off there. The synthetic corpus's documents rarely repeat anything a model could not predict
anyway, and the embedded Llama came out of pre-training unable to copy at all. So:

- `copying_documents(count, seed)`, for the pre-training corpus (`synth --task corpus --extra-documents N`):
  reading passages (whose invented names recur within each) and, twice as many, repeat documents: a random
  sequence (made-up words, common words in random order, codes, names, numbers) that comes back later in the
  same document, right away or after unrelated text, as in order confirmations, roll calls and logs. Its
  second occurrence can only be predicted by copying the first.
- `copy_row(rng)`, the `copy` instruction task: "Repeat the following: <sequence>" -> the sequence, in several
  phrasings, and lists named in a text asked for again after other text.

Measured (evaluate/induction.py's copy ratio, 1.00 = no copying): at the embedded Llama's scale (6 layers,
hidden 256) these documents are not enough. With 5,000 repeats among 40,000 documents, one epoch left it at
1.00; with 8,000 among 42,000 it stayed at 1.00 through 4.2 epochs (2,275 steps of 4,096 tokens). Induction
heads form after a plateau that, on varied text, outlasts a CPU budget. The build now forms them first
(`pretrain --copy-warmup-steps`, train/copy_warmup.py); these documents make copying pay off afterwards, and the
fine-tuning tasks that copy (`copy`, `reading`, `extract`) teach copying from the prompt directly.
"""

from __future__ import annotations

import random

from .synthetic_passages import invented_word, person
from .synthetic_reading import reading_document

COMMON_WORDS = """
apple river window green quiet table seven under bright garden paper orange stone early music winter letter
yellow market silver hand short bridge coffee north little basket forest cloud candle mirror simple ladder sugar
rabbit engine thunder narrow pocket velvet island copper lemon shadow button harbor meadow pencil violet wooden
second friend rocket blanket kitchen mountain bottle station planet spoon tiger honest circle dragon feather
jacket lantern marble needle ocean puzzle ribbon saddle tunnel umbrella wagon yard zebra anchor barrel cactus
desert elbow fiddle glove hammer iron jungle kettle lizard magnet nest oyster pillow quilt rope salt thimble
""".split()
FILLER = [
    "The weather stayed dry all afternoon.", "Nobody answered the phone at the front desk.",
    "The meeting ran a little late, as usual.", "A delivery van was parked outside the gate.",
    "Someone had left the lights on in the hall.", "The coffee machine on the second floor was broken again.",
    "It started to rain just before five.", "The train was ten minutes late that morning.",
]
REPEAT_FRAMES = [  # (before the first copy, before the second), for corpus documents
    ("Order: {seq}.", "Confirmed order: {seq}."), ("Code: {seq}", "Code again: {seq}"),
    ("Guest list: {seq}.", "Checked at the door: {seq}."), ("Today's list: {seq}.", "The list once more: {seq}."),
    ("Password hint: {seq}", "Hint repeated: {seq}"), ("Items to pack: {seq}.", "Packed: {seq}."),
    ("{seq}", "{seq}"), ("Read aloud: {seq}.", "The class repeats: {seq}."),
]
COPY_FORMS = ["Repeat the following: {seq}", "Copy this text exactly.\n\n{seq}", "{seq}\n\nWrite the text above again, word for word.",
              "Say this back to me: {seq}", "Repeat after me.\n{seq}"]
LIST_FORMS = [  # (the list in a text, the question that asks for it back); {things} names what the list holds
    ("The {things} on today's list are {seq}.", "List the {things} given above, in order."),
    ("Please note these {things}: {seq}.", "Which {things} were noted? Give them in the same order."),
    ("We have {count} {things}: {seq}.", "What are the {count} {things}, in order?"),
]


CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: a code never spells a word, or a name of another task


def code(rng: random.Random) -> str:
    letters = "".join(rng.choice(CODE_LETTERS) for _ in range(rng.choice([2, 3])))
    return rng.choice([f"{letters}-{rng.randrange(10, 9999)}", f"{letters}{rng.randrange(100, 999)}",
                       "".join(rng.choice("0123456789abcdef") for _ in range(rng.choice([4, 6, 8])))])


SEQUENCE_KINDS = {  # kind: (what one item is, the name of the items, separator, item counts)
    "words": (lambda rng: rng.choice(COMMON_WORDS), "words", " ", (4, 30)),
    "invented": (lambda rng: invented_word(rng, rng.choice([1, 2, 3])).lower(), "words", " ", (3, 16)),
    "codes": (code, "codes", ", ", (2, 10)),
    "names": (person, "names", ", ", (2, 8)),
    "numbers": (lambda rng: str(rng.randrange(0, 1000)), "numbers", " ", (4, 24)),
}


def random_sequence(rng: random.Random, kind: str | None = None) -> tuple[str, str, int]:
    """(the sequence as text, what its items are called, how many items): random, so only copying predicts it."""
    kind = kind or rng.choice(list(SEQUENCE_KINDS))
    draw, things, separator, (low, high) = SEQUENCE_KINDS[kind]
    items = [draw(rng) for _ in range(rng.randrange(low, high + 1))]
    return separator.join(items), things, len(items)


def repeat_document(rng: random.Random) -> str:
    """A document whose random sequence comes back: at once, after unrelated sentences, or a third time."""
    seq = random_sequence(rng)[0]
    first, second = rng.choice(REPEAT_FRAMES)
    between = " ".join(rng.sample(FILLER, rng.choice([0, 0, 1, 2, 3])))
    parts = [first.format(seq=seq), *([between] if between else []), second.format(seq=seq)]
    if rng.random() < 0.4:
        parts.append(second.format(seq=seq))
    return (" " if rng.random() < 0.5 else "\n").join(parts)


def copy_row(rng: random.Random) -> dict:
    """Repeat a random sequence (70%), or give back a list named earlier in a text (30%); the completion is the copy."""
    if rng.random() < 0.7:
        seq = random_sequence(rng)[0]
        return {"prompt": rng.choice(COPY_FORMS).format(seq=seq), "completion": seq}
    seq, things, count = random_sequence(rng, rng.choice(["codes", "names", "invented"]))
    listed, asked = rng.choice(LIST_FORMS)
    seq = seq.replace(" ", ", ") if things == "words" else seq
    between = " ".join(rng.sample(FILLER, rng.choice([1, 2])))
    prompt = f"{listed}\n\n{between}\n\n{asked}".format(things=things, seq=seq, count=count)
    return {"prompt": prompt, "completion": seq}


def copying_documents(count: int, seed: int) -> list[str]:
    """Documents for the end of the pre-training corpus: two repeat documents, then a reading passage, and so on."""
    rng = random.Random(f"llmcycle/corpus-extra/{seed}")
    return [reading_document(rng) if i % 3 == 2 else repeat_document(rng) for i in range(count)]
