"""`llmcycle synth --task reading`: a passage, a question, and the span of the passage that answers it.

Reading comprehension as FLAN mixes it (SQuAD-like extraction, with SQuAD 2.0's unanswerable questions): passages
in four styles (data/synthetic_passages.py: documentation pages about invented software, short stories, tables
written as text; data/synthetic_entries.py: encyclopedia entries about invented things), about a fifth of the
questions about something the passage does not say, answered "The text does not say." (UNANSWERABLE), so that a
reader learns to copy what is there and not to make up what is not. (A tenth was tried on the embedded Llama: it
refused fewer questions and made up more answers, with no measurable change in those answered right;
bench/RESULTS.md, session 12.) About 40% are laid out exactly as `llmcycle rag ask` and `rag eval` lay out
retrieved passages (rag/ask.py's `render`: "[n] title: text" blocks, then the question): one to five passages, one
of which holds the answer, the others pages of the same product (or stories, tables, entries) as a retriever would
bring back, so a model tuned on them has seen its RAG prompts before the quickstart shows it one. A share of those
ask across two pages (who leads the group that owns a component), as `docs-qa` does.

Each row: `prompt`, `completion` (the span alone, or UNANSWERABLE), `answerable`, `layout` (plain or rag) and
`style` (docs, story or table).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .synthetic_entries import entry
from .synthetic_passages import BRIDGE_QUESTIONS, Passage, club_story, product, table, trade_story

UNANSWERABLE = "The text does not say."
UNANSWERABLE_SHARE = 0.2
RAG_SHARE = 0.4
BRIDGE_SHARE = 0.2
"""Of the answerable documentation rows in the RAG layout: questions whose answer takes two pages."""
STYLE_WEIGHTS = {"docs": 40, "story": 20, "table": 20, "entry": 40}
PASSAGE_COUNTS = {1: 10, 2: 20, 3: 30, 4: 20, 5: 20}
RAG_CHARACTER_BUDGET = 1600
"""Longest passage text in a RAG-layout prompt: distractors past it are dropped (never the answer's page), as
`rag ask` drops the lowest-ranked chunks of a prompt longer than the model's window. About 400 tokens for a
tokenizer trained on a corpus with reading passages in it (about 4 characters a token on prose), so a row stays
within the 512 tokens the build fine-tunes on."""
TABLE_DENSITY = 1.5
"""A table takes about 1.5 times the tokens of prose of the same length (numbers, codes, separators)."""
READING_FORMS = [
    "Passage: {text}\n\nQuestion: {question}\nAnswer:",
    "{title}\n\n{text}\n\nQ: {question}\nA:",
    "Answer the question with words from the text. If the text does not give the answer, say \"" + UNANSWERABLE
    + "\"\n\nText: {text}\n\nQuestion: {question}",
    "Here is a document.\n\n{text}\n\nUsing only the document, answer: {question}",
    "{text}\n\nAccording to the text above, {question_lower}",
]


@dataclass
class ReadingItem:
    """One reading question with what it was asked about: the passages shown, and for an unanswerable question the
    true value the passages leave out (`withheld`)."""

    prompt: str
    completion: str
    question: str
    passages: list[dict]
    withheld: str | None
    layout: str
    style: str

    def row(self) -> dict:
        return {"prompt": self.prompt, "completion": self.completion, "answerable": self.withheld is None,
                "layout": self.layout, "style": self.style}


def one_passage(rng: random.Random, style: str) -> Passage:
    if style == "story":
        return rng.choice([trade_story, club_story])(rng)
    if style == "table":
        return table(rng)
    if style == "entry":
        return entry(rng)
    made = product(rng, 1)
    return made.component_pages[0] if rng.random() < 0.8 else rng.choice(list(made.group_pages.values()))


def _ask(rng: random.Random, passage: Passage, answerable: bool) -> tuple[str, str] | None:
    pool = passage.answered if answerable else passage.unanswered
    return rng.choice(pool) if pool else None


def plain_item(rng: random.Random, style: str, answerable: bool) -> ReadingItem:
    """One passage in one of READING_FORMS, and a question about it."""
    while True:
        passage = one_passage(rng, style)
        asked = _ask(rng, passage, answerable)
        if asked:
            break
    question, answer = asked
    form = rng.choice(READING_FORMS)
    prompt = form.format(title=passage.title, text=passage.text, question=question, question_lower=question[0].lower() + question[1:])
    return ReadingItem(prompt, answer if answerable else UNANSWERABLE, question, [_shown(passage)], None if answerable else answer, "plain", style)


def _shown(passage: Passage) -> dict:
    return {"title": passage.title, "text": passage.text}


def _related(rng: random.Random, style: str, count: int) -> tuple[list[Passage], Passage, list[tuple[str, str, list[Passage]]]]:
    """Passages a retriever could bring back together: `count` shown ones of one product (or stories, or tables),
    one more that is never shown (so its questions go unanswered), and the two-page questions among the shown
    ones as (question, answer, [component page, group page])."""
    if style != "docs":
        return [one_passage(rng, style) for _ in range(count)], one_passage(rng, style), []
    made = product(rng, count + 1)
    groups = rng.choice([0, 1]) if count > 1 else 0  # a group page among them, mostly the group of a shown component
    shown = made.component_pages[: count - groups]
    if groups:
        owner = rng.choice(made.components[: count - groups])["group"] if rng.random() < 0.7 else rng.choice(list(made.groups))
        shown = [*shown, made.group_pages[owner]]
    bridges = []
    for c, page in zip(made.components, shown):
        group_page, lead = made.group_pages[c["group"]], made.groups[c["group"]]["lead"]
        if group_page in shown and c["group"] in page.text and lead in group_page.text:
            bridges.append((rng.choice(BRIDGE_QUESTIONS["lead"]).format(name=c["name"]), lead, [page, group_page]))
    return shown, made.component_pages[-1], bridges


def _rag_question(rng: random.Random, shown: list[Passage], hidden: Passage, bridges: list, answerable: bool):
    """(question, answer or withheld value, the shown passages that answer it), or None to draw again."""
    if answerable:
        if bridges and rng.random() < BRIDGE_SHARE * 3:  # two-page questions are possible in about a third of docs rows
            return rng.choice(bridges)
        gold = rng.choice(shown)
        asked = _ask(rng, gold, True)
        return (*asked, [gold]) if asked else None
    source = hidden if rng.random() < 0.5 else rng.choice(shown)  # about a page not retrieved, or a fact a shown page leaves out
    asked = _ask(rng, source, source is hidden)
    if asked is None or any(asked[1] in p.text for p in shown):
        return None
    return (*asked, [])


def _within_budget(rng: random.Random, shown: list[Passage], keep: list[Passage], style: str) -> list[Passage]:
    """The shown passages in a random order, the ones holding the answer first 40% of the time (as a retriever
    ranks them), less distractors past RAG_CHARACTER_BUDGET."""
    order = rng.sample(shown, len(shown))
    if keep and rng.random() < 0.4:
        order = [*keep, *(p for p in order if p not in keep)]
    density = TABLE_DENSITY if style == "table" else 1.0
    while sum(len(p.text) for p in order) * density > RAG_CHARACTER_BUDGET and any(p not in keep for p in order):
        order.remove(next(p for p in reversed(order) if p not in keep))
    return order


def rag_item(rng: random.Random, style: str, answerable: bool) -> ReadingItem:
    """One to five passages laid out as `rag ask` lays them out, and a question that one (or two) of them answer."""
    from ..rag.ask import render  # deferred: rag.ask imports torch, which `llmcycle synth --help` should not

    while True:
        count = rng.choices(list(PASSAGE_COUNTS), weights=list(PASSAGE_COUNTS.values()))[0]
        shown, hidden, bridges = _related(rng, style, count)
        asked = _rag_question(rng, shown, hidden, bridges, answerable)
        if asked:
            break
    question, answer, keep = asked
    passages = [_shown(p) for p in _within_budget(rng, shown, keep, style)]
    completion = answer if answerable else UNANSWERABLE
    return ReadingItem(render(question, passages), completion, question, passages, None if answerable else answer, "rag", style)


def reading_item(rng: random.Random) -> ReadingItem:
    style = rng.choices(list(STYLE_WEIGHTS), weights=list(STYLE_WEIGHTS.values()))[0]
    answerable = rng.random() >= UNANSWERABLE_SHARE
    return (rag_item if rng.random() < RAG_SHARE else plain_item)(rng, style, answerable)


def reading_row(rng: random.Random) -> dict:
    return reading_item(rng).row()


def reading_document(rng: random.Random) -> str:
    """A passage as running text for the pre-training corpus: its title, then its text; no question."""
    passage = one_passage(rng, rng.choices(list(STYLE_WEIGHTS), weights=list(STYLE_WEIGHTS.values()))[0])
    return f"{passage.title}\n\n{passage.text}"
