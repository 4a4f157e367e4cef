"""Encyclopedia entries about invented things: the reading task's fourth style of passage.

The other styles (data/synthetic_passages.py) are software documentation, stories and tables. The pages people
index for retrieval are as often short entries about one thing: who makes it, where, of what, how big, since
when, who runs it. An entry here is three to five such sentences about an invented thing of one of eight kinds
(objects, machines, buildings, crossings, foods, events, creatures, inventions of the mind), each fact stated in
one of several ways and asked in one of several others ("Brenthal Works makes the Quoskin lantern." / "Who is the
maker of the Quoskin lantern?"), the sentences after the first mostly saying "It" for the thing. A reader learns
from them to find the sentence that answers a question worded unlike it and to copy the value, which is what
answering from pages it never saw asks. Facts of the entry's kind that it does not state are asked too, and the
answer is then that the text does not say.

Names are coined from about 5,400 syllables (`coined`), not the 30 the other passages draw from, so that an answer
cannot be guessed from the look of the names a model has seen, only copied; none of them is one of the `docs-qa`
task's or of the invented pages the examples evaluate on (examples/data/unseen-docs and unseen-docs-2).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from . import synthetic_docs
from .synthetic_passages import Passage

NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
MATERIALS = ["cork", "oak", "brass", "copper", "glass", "slate", "bamboo", "leather", "tin", "marble", "bone",
             "walnut", "pewter", "ash wood", "red clay", "steel", "limestone", "sandstone"]
COLOURS = ["amber", "pale green", "dark blue", "rust red", "silver grey", "yellow", "black", "white", "violet"]
ROLES = ["engineer", "chemist", "mathematician", "architect", "botanist", "clockmaker", "sailor", "teacher",
         "surgeon", "painter", "astronomer", "miller"]
ORG_KINDS = ["Works", "Foundry", "Brothers", "Company", "Guild", "Mills", "Instruments", "Engineering", "Institute",
             "Trust", "Society", "Cooperative"]
ONSETS = ["b", "br", "c", "ch", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pl", "qu", "r",
          "s", "sh", "sk", "st", "t", "th", "tr", "v", "w", "wr", "y", "z", ""]
NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y", "ee", "oa"]
CODAS = ["", "", "", "n", "r", "l", "s", "m", "k", "t", "nd", "rk", "ll", "sk", "th", "x", "ng"]
DOCS_QA_WORD = re.compile("(?:" + "|".join(synthetic_docs.SYLLABLES) + ")+", re.IGNORECASE)
DOCS_QA_NAMES = {name.lower() for name in
                 (*synthetic_docs.TEAM_NAMES, *synthetic_docs.FIRST, *synthetic_docs.LAST, *synthetic_docs.KINDS)}


def coined(rng: random.Random, syllables: int | None = None) -> str:
    """A made-up name of 1 to 3 syllables from about 5,400 (onset, vowel, coda): unlike the 30 syllables of the other
    reading passages, too many for a model to guess a name from them, so the one way to answer with it is to copy
    it from the passage. Never a name of the `docs-qa` task nor one made of its syllables (drawn again)."""
    count = syllables or rng.choice([1, 2, 2, 2, 3])
    while True:
        word = "".join(rng.choice(ONSETS) + rng.choice(NUCLEI) + rng.choice(CODAS) for _ in range(count))
        if not DOCS_QA_WORD.fullmatch(word) and word not in DOCS_QA_NAMES:
            return word.capitalize()


def person(rng: random.Random) -> str:
    return f"{coined(rng, rng.choice([1, 2]))} {coined(rng, rng.choice([1, 2, 2]))}"


def _org(rng: random.Random) -> str:
    return f"{coined(rng)} {rng.choice(ORG_KINDS)}"


def _place(rng: random.Random) -> str:
    return coined(rng, rng.choice([2, 2, 3]))


def _count(rng: random.Random, low: int, high: int) -> str:
    """A number as an entry would write it: small ones often in words, large ones with thousands commas."""
    value = rng.randrange(low, high)
    if 2 <= value <= 12 and rng.random() < 0.6:
        return NUMBER_WORDS[value - 2]
    return f"{value:,}"


def _amount(low: int, high: int, unit: str) -> Callable[[random.Random], str]:
    """A value drawer: a count from [low, high) in a unit ("2,310 metres")."""
    return lambda rng: f"{_count(rng, low, high)} {unit}"


def _year(low: int, high: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randrange(low, high))


def _decimal(rng: random.Random, low: float, high: float) -> str:
    return f"{rng.uniform(low, high):.1f}"


@dataclass
class Relation:
    """One kind of fact: how its value is drawn, ways to state it ({The}/{the} name the thing, {It}/{Its} name it
    again after the first sentence, {v} is the value, other slots come from `extra`) and ways to ask it."""

    value: Callable[[random.Random], str]
    says: list[str]
    asks: list[str]
    extra: Callable[[random.Random], dict] | None = None


def _r(value, says, asks, extra=None) -> Relation:  # the table's rows, kept short
    return Relation(value, says, asks, extra)


def _part(*parts):
    return lambda rng: {"part": rng.choice(parts)}


def _role(rng: random.Random) -> dict:
    return {"role": rng.choice(ROLES)}


RELATIONS = {
    "maker": _r(_org, ["{The} is made by {v}.", "{v} makes {the}.", "{Its} maker is {v}.", "{The} is built by {v}."],
                ["Who makes {the}?", "Which company makes {the}?", "Who is the maker of {the}?", "Who builds {the}?"]),
    "made_in": _r(_place, ["{The} is made in the town of {v}.", "{It} comes from the town of {v}.", "{The} is produced in {v}."],
                  ["Where is {the} made?", "In which town is {the} made?", "Which town does {the} come from?"]),
    "material": _r(lambda rng: rng.choice(MATERIALS), ["{Its} {part} is made of {v}.", "The {part} of {the} is {v}."],
                   ["What is the {part} of {the} made of?", "Which material is the {part} of {the}?"],
                   _part("handle", "case", "lid", "frame", "base", "dial")),
    "capacity": _r(lambda rng: f"{_decimal(rng, 0.3, 9.0)} litres", ["{The} holds {v}.", "{It} can hold {v}."],
                   ["How much does {the} hold?", "What is the capacity of {the}?"]),
    "weight": _r(_amount(2, 900, "kilograms"), ["{The} weighs {v}.", "{It} has a weight of {v}."],
                 ["How much does {the} weigh?", "What is the weight of {the}?"]),
    "year_made": _r(_year(1720, 2015), ["{The} was first made in {v}.", "{It} has been made since {v}."],
                    ["When was {the} first made?", "Since which year has {the} been made?"]),
    "speed": _r(_amount(5, 300, "kilometres an hour"), ["{The} reaches {v}.", "{Its} top speed is {v}."],
                ["How fast is {the}?", "What is the top speed of {the}?"]),
    "designed_by": _r(person, ["{The} was designed by the {role} {v}.", "The {role} {v} designed {the}."],
                      ["Who designed {the}?", "Which {role} designed {the}?"], _role),
    "owner": _r(_org, ["{The} is owned by {v}.", "{v} owns {the}.", "{It} belongs to {v}."],
                ["Who owns {the}?", "To whom does {the} belong?", "Which company owns {the}?"]),
    "paint": _r(lambda rng: rng.choice(COLOURS), ["{The} is painted {v}.", "{It} is {v}."],
                ["What colour is {the}?", "What colour is {the} painted?"]),
    "town": _r(_place, ["{The} stands in the town of {v}.", "{The} is in {v}.", "{It} is found in the town of {v}."],
               ["Where is {the}?", "In which town is {the}?", "Which town is {the} in?"]),
    "mountain": _r(lambda rng: f"Mount {_place(rng)}", ["{The} stands on {v}.", "{It} sits on the top of {v}."],
                   ["On which mountain does {the} stand?", "Which mountain is {the} on?"]),
    "altitude": _r(_amount(200, 4500, "metres"), ["{The} is {v} above the sea.", "{It} lies at {v} above sea level."],
                   ["How high above the sea is {the}?", "At what height does {the} lie?"]),
    "opened": _r(_year(1700, 2015), ["{The} was opened in {v}.", "{It} opened in {v}."],
                 ["When was {the} opened?", "In which year did {the} open?"]),
    "opened_by": _r(person, ["{The} was opened by the {role} {v}.", "The {role} {v} opened {the}."],
                    ["Who opened {the}?", "Which {role} opened {the}?"], _role),
    "run_by": _r(_org, ["{The} is run by {v}.", "{v} runs {the}.", "{It} is managed by {v}."],
                 ["Who runs {the}?", "Which body manages {the}?"]),
    "holds": _r(lambda rng: f"{_count(rng, 300, 120000)} {rng.choice(['books', 'maps', 'paintings', 'clocks', 'letters', 'seeds'])}",
                ["{The} keeps {v}.", "{It} holds {v}."], ["How many items does {the} keep?", "What does {the} hold?"]),
    "hours": _r(lambda rng: f"{rng.randrange(7, 11)} am", ["{The} opens at {v} and closes at {close} pm.", "{It} opens at {v} every day."],
                ["What time does {the} open?", "When does {the} open?"], lambda rng: {"close": str(rng.randrange(4, 9))}),
    "head": _r(person, ["The {role} of {the} is {v}.", "{v} is the {role} of {the}.", "{v} serves as {role} of {the}."],
               ["Who is the {role} of {the}?", "Who serves as {role} of {the}?"],
               lambda rng: {"role": rng.choice(["director", "curator", "keeper", "warden", "archivist", "chief guide"])}),
    "river": _r(_place, ["{The} crosses the river {v}.", "{It} spans the river {v}."],
                ["Which river does {the} cross?", "What river does {the} span?"]),
    "engineer": _r(person, ["{The} was designed by the engineer {v}.", "The engineer {v} designed {the}."],
                   ["Who designed {the}?", "Which engineer designed {the}?"]),
    "arches": _r(lambda rng: rng.choice(NUMBER_WORDS), ["{The} has {v} arches of {stone}.", "{It} rests on {v} arches of {stone}."],
                 ["How many arches does {the} have?", "On how many arches does {the} rest?"],
                 lambda rng: {"stone": rng.choice(["grey granite", "red brick", "white limestone", "sandstone"])}),
    "length": _r(_amount(40, 3000, "metres"), ["{The} is {v} long.", "{It} runs for {v}."],
                 ["How long is {the}?", "What is the length of {the}?"]),
    "ingredient": _r(lambda rng: rng.choice(["goat milk", "sheep milk", "rye flour", "barley", "wild plums", "pine honey", "black tea leaves", "chestnuts"]),
                     ["{The} is made from {v}.", "{It} is made with {v}."], ["What is {the} made from?", "What is {the} made with?"]),
    "region": _r(lambda rng: f"the valley of {_place(rng)}", ["{The} comes from {v}.", "{It} is made in {v}."],
                 ["Where does {the} come from?", "Which valley does {the} come from?"]),
    "month": _r(lambda rng: rng.choice(MONTHS), ["{The} takes place every {v}.", "{The} is held each {v}."],
                ["When does {the} take place?", "In which month is {the} held?"]),
    "village": _r(_place, ["{The} is held in the village of {v}.", "{It} takes place in {v}."],
                  ["Where is {the} held?", "In which village does {the} take place?"]),
    "founded": _r(_year(1600, 2010), ["{The} was first held in {v}.", "{It} began in {v}."],
                  ["When was {the} first held?", "In which year did {the} begin?"]),
    "habitat": _r(lambda rng: f"the {rng.choice(['forests', 'marshes', 'hills', 'dunes', 'caves'])} of {_place(rng)}",
                  ["{The} lives in {v}.", "{It} is found in {v}."], ["Where does {the} live?", "Where is {the} found?"]),
    "eats": _r(lambda rng: rng.choice(["pine needles", "snails", "moss", "fallen apples", "beetle larvae", "reed seeds"]),
               ["{The} feeds on {v}.", "{It} eats {v}."], ["What does {the} feed on?", "What does {the} eat?"]),
    "size": _r(_amount(4, 90, "millimetres"), ["{The} grows to {v}.", "{It} is {v} long."],
               ["How big does {the} grow?", "How long is {the}?"]),
    "colour": _r(lambda rng: rng.choice(COLOURS), ["{Its} {part} is {v}.", "The {part} of {the} is {v}."],
                 ["What colour is the {part} of {the}?", "Which colour is the {part} of {the}?"], _part("shell", "back", "wing", "head")),
    "discovered_by": _r(person, ["{The} was first described by the {role} {v}.", "The {role} {v} first described {the}."],
                        ["Who first described {the}?", "Which {role} described {the}?"], _role),
    "invented_by": _r(person, ["{The} was invented by the {role} {v}.", "The {role} {v} invented {the}."],
                      ["Who invented {the}?", "Which {role} invented {the}?"], _role),
    "year_invented": _r(_year(1500, 2010), ["{The} was invented in {v}.", "{It} dates from {v}."],
                        ["When was {the} invented?", "What year does {the} date from?"]),
    "used_by": _r(lambda rng: rng.choice(["sailors", "weavers", "monks", "miners", "traders", "shepherds"]),
                  ["{v} in {place} used {the}.", "{The} was used by {v} in {place}."],
                  ["Who used {the}?", "Which people in {place} used {the}?"], lambda rng: {"place": _place(rng)}),
    "speakers": _r(_amount(300, 90000, "people"), ["{The} is spoken by about {v}.", "About {v} speak {the}."],
                   ["How many people speak {the}?", "By how many people is {the} spoken?"]),
    "visitors": _r(_amount(200, 90000, "visitors"), ["{The} draws about {v} a year.", "About {v} come to {the} each year."],
                   ["How many visitors does {the} draw?", "How many people come to {the} each year?"]),
    "named_after": _r(person, ["{The} is named after the {role} {v}.", "{Its} name honours the {role} {v}."],
                      ["Who is {the} named after?", "Whom does the name of {the} honour?"], _role),
    "price": _r(_amount(2, 90, "euros"), ["{The} sells for {v} a kilo.", "A kilo of {the} costs {v}."],
                ["How much does {the} cost?", "What does a kilo of {the} cost?"]),
    "lifespan": _r(_amount(2, 40, "years"), ["{The} lives for about {v}.", "{It} can live {v}."],
                   ["How long does {the} live?", "What is the lifespan of {the}?"]),
}


@dataclass
class Kind:
    """Things of one kind: their nouns, whether an entry says "the" before the name, the facts it can state."""

    nouns: list[str]  # capitalised where the noun is part of the name ("Brenthal Bridge")
    article: bool
    relations: list[str]


KINDS = {
    "object": Kind(["kettle", "lamp", "clock", "loom", "stove", "radio", "compass", "lantern", "barometer", "typewriter", "kite"],
                   True, ["maker", "made_in", "material", "capacity", "weight", "year_made"]),
    "machine": Kind(["engine", "robot", "crane", "pump", "turbine", "tractor", "drone", "generator"],
                    True, ["maker", "made_in", "speed", "weight", "year_made", "designed_by", "owner", "paint"]),
    "building": Kind(["Library", "Observatory", "Museum", "Lighthouse", "Tower", "Theatre", "Mill", "Archive"],
                     False, ["town", "mountain", "altitude", "opened", "opened_by", "run_by", "holds", "hours", "head", "visitors", "named_after"]),
    "crossing": Kind(["Bridge", "Dam", "Tunnel", "Viaduct", "Ferry"],
                     False, ["river", "town", "opened", "engineer", "arches", "length", "run_by"]),
    "food": Kind(["cheese", "bread", "tea", "honey", "cider", "sausage", "cake", "jam"],
                 False, ["ingredient", "region", "maker", "year_made", "price", "named_after"]),
    "event": Kind(["Festival", "Fair", "Regatta", "Games", "Market"],
                  True, ["month", "village", "founded", "run_by", "visitors", "named_after"]),
    "creature": Kind(["beetle", "moth", "frog", "lizard", "finch", "eel", "snail"],
                     True, ["habitat", "eats", "size", "colour", "discovered_by", "lifespan"]),
    "idea": Kind(["cipher", "language", "dance", "board game", "alphabet", "calendar"],
                 True, ["invented_by", "year_invented", "used_by", "speakers", "named_after"]),
}
KIND_WEIGHTS = {"object": 3, "machine": 2, "building": 2, "crossing": 1, "food": 2, "event": 1, "creature": 1, "idea": 1}
NOT_FOR = {"speakers": ["cipher", "dance", "board game", "calendar"],
           "capacity": ["clock", "loom", "radio", "compass", "barometer", "typewriter", "kite"],
           "opened_by": ["Ferry"], "arches": ["Tunnel", "Ferry", "Dam"], "mountain": ["Mill", "Archive", "Theatre"],
           "speed": ["crane", "pump", "turbine", "generator"], "price": ["cider", "tea"]}
"""Facts that do not fit some nouns: a cipher has no speakers, a ferry has no arches."""


def _naming(rng: random.Random, kind: Kind, noun: str) -> dict:
    """How an entry names its subject: the title, the full name with and without a capital, and the pronouns."""
    proper = coined(rng, rng.choice([2, 2, 3]))
    name = proper if noun == "language" else f"{proper} {noun}"
    the = f"the {name}" if kind.article and noun != "language" else name
    return {"title": name[0].upper() + name[1:], "the": the, "The": the[0].upper() + the[1:]}


def _sentence(rng: random.Random, relation: Relation, slots: dict, first: bool) -> str:
    said = rng.choice(relation.says)
    if not first and rng.random() < 0.6:  # after the first sentence an entry mostly says "It" for its subject
        said = said.replace("{The}", "{It}")
    pronouns = {"It": slots["The"], "Its": slots["The"] + "'s"} if first else {"It": "It", "Its": "Its"}
    text = said.format(**slots, **pronouns)
    return text[0].upper() + text[1:]


def entry(rng: random.Random) -> Passage:
    """An entry about one invented thing: 3 to 5 of its kind's facts stated, up to two others asked and not stated."""
    kind = KINDS[rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]]
    noun = rng.choice(kind.nouns)
    naming = _naming(rng, kind, noun)
    keys = [k for k in kind.relations if noun not in NOT_FOR.get(k, [])]
    stated = rng.sample(keys, min(len(keys), rng.randrange(3, 6)))
    open_keys = [k for k in keys if k not in stated][:2]
    facts = []
    for key in [*stated, *open_keys]:
        relation = RELATIONS[key]
        slots = {**naming, **(relation.extra(rng) if relation.extra else {}), "v": relation.value(rng)}
        facts.append((key, slots, rng.choice(relation.asks).format(**slots)))
    sentences = [_sentence(rng, RELATIONS[key], slots, first=index == 0)
                 for index, (key, slots, _) in enumerate(facts[: len(stated)])]
    passage = Passage(naming["title"], " ".join(sentences))
    for key, slots, question in facts:
        if key in stated:  # the span as the text has it ("Sailors in Drenthal used ..." opens a sentence)
            value = slots["v"]
            passage.answered.append((question, value if value in passage.text else value[0].upper() + value[1:]))
        elif slots["v"] not in passage.text and all(value in passage.text for name, value in slots.items()
                                                      if name not in ("v", "title", "the", "The") and value in question):
            passage.unanswered.append((question, slots["v"]))
    return passage
