"""The invented world of the reading task: documentation pages, short stories and tables, each with the facts it states.

Why invented: a reader that answers from a passage has to copy what the passage says, not recall it, so every
name, number and place here is drawn at random (names built from syllables) and appears in no other task. None
of it is the `docs-qa` task's (data/synthetic_docs.py): other syllables, other kinds of component, other team and
person names, so the quickstart's retrieval test stays on documents the model never saw.

A passage states some of its subject's facts and leaves the others out (a sentence dropped, a column not shown):
questions about the first are answered by a span of the passage, questions about the second are not answered
by it at all (the fact's value is checked to be absent from the text).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SYLLABLES = ["ka", "ve", "ri", "sol", "mun", "tre", "ola", "bix", "dra", "fen", "gal", "hes", "ilo", "kam", "lur",
             "mav", "nos", "pel", "qua", "rin", "sef", "tam", "ulm", "vin", "wex", "yor", "zan", "eth", "ock", "ump"]
FIRST_NAMES = ["Orsolya", "Benedek", "Tove", "Ignatius", "Marisol", "Kasimir", "Linnea", "Achille", "Soraya", "Emeric",
               "Philippa", "Radek", "Cosimo", "Halldora", "Teodor", "Wanda", "Faustina", "Gunnar", "Zelie", "Bertil",
               "Annika", "Lorcan", "Mahala", "Oswin", "Perpetua", "Quirin", "Saoirse", "Tobiah", "Valdis", "Yevgenia"]
LAST_NAMES = ["Brandt", "Quist", "Ahlberg", "Castellanos", "Dufresne", "Fontaine", "Gallagher", "Horvath", "Jablonski",
              "Kuusk", "Lefebvre", "Mbeki", "Nakamura", "Oyelaran", "Petrov", "Rasku", "Szabo", "Underhill"]
GROUPS = ["Cedar", "Birch", "Juniper", "Quartz", "Cobalt", "Amber", "Garnet", "Willow", "Alder", "Basalt", "Saffron", "Indigo"]
COMPONENT_KINDS = ["proxy", "daemon", "exporter", "router", "loader", "watcher", "mirror", "planner", "collector",
                   "sandbox", "registry", "notifier", "resolver", "uploader", "validator"]
LANGUAGES = ["Rust", "Go", "Java", "Python", "Kotlin", "Elixir", "C++", "Haskell"]
RATE_UNITS = ["events", "queries", "uploads", "sessions", "lookups", "writes"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def invented_word(rng: random.Random, syllables: int = 2) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def person(rng: random.Random) -> str:
    """A full name; half the surnames are invented, so most people here are new to any model."""
    last = rng.choice(LAST_NAMES) if rng.random() < 0.5 else invented_word(rng, rng.choice([2, 3]))
    return f"{rng.choice(FIRST_NAMES)} {last}"


@dataclass
class Fact:
    """One thing a passage may state: how it is said, how it is asked, and the span that answers it."""

    sentence: str
    questions: list[str]
    answer: str


@dataclass
class Passage:
    """A titled text about one subject, the questions it answers (question, span) and the ones it leaves open
    (question, the true value, which the text does not contain)."""

    title: str
    text: str
    answered: list[tuple[str, str]] = field(default_factory=list)
    unanswered: list[tuple[str, str]] = field(default_factory=list)


def _split(rng: random.Random, facts: dict[str, Fact], keep_at_least: int) -> tuple[list[str], list[str]]:
    """(stated, left out) fact keys: up to two facts are left out, never so many that fewer than `keep_at_least` stay."""
    keys = list(facts)
    left_out = rng.sample(keys, min(rng.choice([0, 1, 1, 2]), max(0, len(keys) - keep_at_least)))
    return [k for k in keys if k not in left_out], left_out


def _passage(rng: random.Random, title: str, head: str, facts: dict[str, Fact], keep_at_least: int, slots: dict) -> Passage:
    """Lead sentences, then the stated facts' sentences in a shuffled order (the lead names the subject first)."""
    stated, left_out = _split(rng, facts, keep_at_least)
    order = rng.sample(stated, len(stated))
    text = " ".join([head, *(facts[k].sentence for k in order)]).format(**slots)
    passage = Passage(title, text)
    for keys, bucket in ((stated, passage.answered), (left_out, passage.unanswered)):
        for key in keys:
            question = rng.choice(facts[key].questions).format(**slots)
            if key in stated or facts[key].answer not in text:  # an unstated value that shows up anyway is not asked
                bucket.append((question, facts[key].answer))
    return passage


# ---------------------------------------------------------------- documentation pages: software components and the groups behind them

def component(rng: random.Random, product: str, groups: list[str], taken: set[str]) -> dict:
    """The facts of one invented software component; `taken` keeps names unique within a product."""
    base = invented_word(rng)
    while base in taken:
        base = invented_word(rng)
    taken.add(base)
    slug, unit = base.lower(), rng.choice(RATE_UNITS)
    return {"name": f"{base} {rng.choice(COMPONENT_KINDS)}", "product": product, "port": str(rng.randrange(1100, 9900)),
            "group": rng.choice(groups), "contact": person(rng), "limit": f"{rng.randrange(2, 90) * 5} {unit}", "unit": unit,
            "release": f"{rng.randrange(1, 9)}.{rng.randrange(0, 20)}", "config": f"/etc/{slug}/{rng.choice(['main', 'server', 'settings'])}.toml",
            "timeout": f"{rng.randrange(2, 60)} seconds", "language": rng.choice(LANGUAGES), "site": invented_word(rng, 3)}


COMPONENT_FACTS = {  # key: (ways to state it, ways to ask it); {The}/{the} name the component
    "port": (["{The} listens on port {port}.", "By default {the} accepts connections on port {port}.", "{The} serves its API on port {port}."],
             ["What port does the {name} listen on?", "Which port does the {name} use by default?", "On which port can the {name} be reached?"]),
    "group": (["{The} is owned by the {group} group.", "The {group} group maintains {the}.", "Ownership of {the} sits with the {group} group."],
              ["Which group owns the {name}?", "Who maintains the {name}?", "Which group is responsible for the {name}?"]),
    "contact": (["Its main contact is {contact}.", "Questions about {the} go to {contact}."],
                ["Who is the main contact for the {name}?", "Whom should questions about the {name} go to?"]),
    "limit": (["{The} handles at most {limit} per second.", "The {name} is capped at {limit} per second."],
              ["How many {unit} per second can the {name} handle?", "What is the per-second cap of the {name}?"]),
    "release": (["{The} first shipped in release {release}.", "{The} was added in {product} {release}."],
                ["In which release did the {name} first ship?", "Which {product} release added the {name}?"]),
    "config": (["Its settings live in the file {config}.", "{The} reads its settings from {config}."],
               ["Which file holds the settings of the {name}?", "Where does the {name} read its settings from?"]),
    "timeout": (["Calls to {the} time out after {timeout}.", "{The} gives up on a request after {timeout}."],
                ["After how long do calls to the {name} time out?", "What is the timeout of the {name}?"]),
    "language": (["{The} is written in {language}.", "The code of {the} is in {language}."],
                 ["In which language is the {name} written?", "What programming language is the {name} written in?"]),
    "site": (["{The} runs in the {site} data centre.", "Its servers are in the {site} data centre."],
             ["In which data centre does the {name} run?", "Where are the servers of the {name}?"]),
}
COMPONENT_LEADS = ["{The} is a part of {product}.", "{The} belongs to the {product} platform.", "This page describes {the}, a service of {product}."]


def component_page(rng: random.Random, c: dict) -> Passage:
    slots = c | {"The": f"The {c['name']}", "the": f"the {c['name']}"}
    facts = {key: Fact(rng.choice(says), asks, c[key]) for key, (says, asks) in COMPONENT_FACTS.items()}
    head = rng.choice(["# {name}\n\n", "## {name}\n\n", ""]) + rng.choice(COMPONENT_LEADS)
    return _passage(rng, rng.choice(["{product} {name}", "{name}", "{name} reference"]).format(**c), head, facts, 5, slots)


def group(rng: random.Random, name: str, product: str) -> dict:
    return {"group": name, "product": product, "lead": person(rng), "day": rng.choice(WEEKDAYS), "floor": f"floor {rng.randrange(2, 30)}",
            "size": f"{rng.randrange(3, 15)} people"}


GROUP_FACTS = {
    "lead": (["The {group} group is led by {lead}.", "{lead} leads the {group} group."],
             ["Who leads the {group} group?", "Who is the lead of the {group} group?"]),
    "day": (["The group meets every {day}.", "Its weekly meeting is on {day}."],
            ["On which day does the {group} group meet?", "When does the {group} group hold its weekly meeting?"]),
    "floor": (["It sits on {floor} of the main office.", "Its desks are on {floor}."],
              ["Where does the {group} group sit?", "On which floor is the {group} group?"]),
    "size": (["The group has {size}.", "It counts {size}."], ["How big is the {group} group?", "How many people are in the {group} group?"]),
}
BRIDGE_QUESTIONS = {  # facts of a group page asked through a component page that names the group
    "lead": ["Who leads the group that owns the {name}?", "Who is the lead of the group responsible for the {name}?"],
    "day": ["On which day does the group that maintains the {name} meet?"],
}


def group_page(rng: random.Random, g: dict) -> Passage:
    facts = {key: Fact(rng.choice(says), asks, g[key]) for key, (says, asks) in GROUP_FACTS.items()}
    head = rng.choice(["# The {group} group\n\n", "## {group} group\n\n", ""]) + "The {group} group works on {product}."
    return _passage(rng, rng.choice(["{product} {group} group", "{group} group"]).format(**g), head, facts, 3, g)


@dataclass
class Product:
    """One invented software product: its components and the groups that own them, each with the page about it."""

    name: str
    components: list[dict]
    groups: dict[str, dict]
    component_pages: list[Passage]
    group_pages: dict[str, Passage]


def product(rng: random.Random, components: int) -> Product:
    name = invented_word(rng, 3)
    group_names = rng.sample(GROUPS, 4)
    taken: set[str] = set()
    parts = [component(rng, name, group_names, taken) for _ in range(components)]
    groups = {g: group(rng, g, name) for g in group_names}
    return Product(name, parts, groups, [component_page(rng, c) for c in parts], {g: group_page(rng, v) for g, v in groups.items()})


# ---------------------------------------------------------------- short stories

TRADE_STORY = [  # (sentence, the facts it states): the first is always kept
    ("{P} lives in {origin} and works as a {job}.", ["origin", "job"]),
    ("Early on {day}, {P1} loaded {count} {goods} onto a {vehicle} and set off for {destination}.", ["day", "count", "goods", "vehicle", "destination"]),
    ("The trip took {hours} hours because of {obstacle}.", ["hours", "obstacle"]),
    ("In {destination}, {P1} sold the load to {buyer}, who runs a {shop} near the {landmark}.", ["destination", "buyer", "shop"]),
    ("The buyer paid {price} coins for all of it.", ["price"]),
    ("On the way home, {P1} stopped at an inn called the {inn}.", ["inn"]),
]
TRADE_QUESTIONS = {
    "origin": ["Where does {P} live?", "Which town is {P} from?"], "job": ["What does {P} work as?", "What is {P}'s job?"],
    "day": ["On which day did {P} set off?", "When did {P} leave?"], "count": ["How many {goods} did {P} take?"],
    "goods": ["What did {P} load onto the {vehicle}?", "What was {P} carrying?"], "vehicle": ["What did {P} travel with?"],
    "hours": ["How many hours did the trip of {P} take?", "How long was the trip of {P}, in hours?"], "obstacle": ["Why did the trip of {P} take so long?"],
    "destination": ["Where did {P} go?", "Where was {P} going?"], "buyer": ["Who bought the load of {P}?", "To whom did {P} sell?"],
    "shop": ["What does {buyer} run?"], "price": ["How much was paid for the load of {P}?", "How many coins did the load of {P} fetch?"],
    "inn": ["Where did {P} stop on the way home?", "What was the inn {P} stopped at called?"],
}
CLUB_STORY = [
    ("The {club} of {town} held its {season} meeting on {day} in the {hall}.", ["club", "town", "day", "hall"]),
    ("{P} chaired the meeting.", ["chair"]),
    ("{count} members came, more than last time.", ["count"]),
    ("{speaker} gave a talk about {topic}.", ["speaker", "topic"]),
    ("The members voted to buy {item} for {price} coins.", ["item", "price"]),
    ("The next meeting will be in {month}.", ["month"]),
]
CLUB_QUESTIONS = {
    "club": ["Which club met in {town}?"], "town": ["In which town is the {club}?"], "day": ["On which day did the {club} meet?"],
    "hall": ["Where did the {club} meet?", "In which hall did the {club} meet?"], "chair": ["Who chaired the meeting of the {club}?"],
    "count": ["How many members of the {club} came?"], "speaker": ["Who gave a talk at the {club}?", "Who spoke at the meeting of the {club}?"],
    "topic": ["What was the talk at the {club} about?", "What did {speaker} talk about?"], "item": ["What did the {club} vote to buy?"],
    "price": ["How much will the {item} of the {club} cost?", "How many coins did the {club} agree to spend?"],
    "month": ["When is the next meeting of the {club}?", "In which month will the {club} meet next?"],
}
JOBS = ["potter", "baker", "carpenter", "weaver", "farmer", "glassblower", "miller", "tailor"]
GOODS = ["crates of pears", "sacks of flour", "barrels of cider", "rolls of cloth", "baskets of eggs", "jars of honey", "bundles of wool"]
VEHICLES = ["cart", "barge", "wagon", "sled", "van"]
OBSTACLES = ["a flooded road", "a broken wheel", "heavy snow", "a closed bridge", "a fallen tree"]
SHOPS = ["market stall", "bakery", "warehouse", "general store", "tavern"]
LANDMARKS = ["clock tower", "old mill", "harbour", "chapel", "fountain"]
CLUB_KINDS = ["Chess Club", "Rowing Society", "Astronomy Circle", "Garden Club", "Choir", "Cycling Club"]
HALLS = ["town hall", "library", "school gym", "community centre", "back room of the bakery"]
TOPICS = ["old maps", "winter birds", "bee keeping", "river boats", "night skies", "stone bridges", "apple trees"]
CLUB_ITEMS = ["a new banner", "two telescopes", "a boat trailer", "a tea urn", "folding chairs", "a projector"]
MONTHS = ["March", "April", "May", "June", "September", "October", "November"]


def _story(rng: random.Random, sentences: list, questions: dict, slots: dict) -> Passage:
    """Keep the first sentence and most of the rest; facts only in dropped sentences become open questions."""
    kept = [sentences[0], *(s for s in sentences[1:] if rng.random() < 0.8)]
    stated = {key for _, keys in kept for key in keys}
    text = " ".join(sentence for sentence, _ in kept).format(**slots)
    passage = Passage(slots["title"], text)
    for key, forms in questions.items():
        question = rng.choice(forms).format(**slots)
        if key in stated:
            passage.answered.append((question, slots[key]))
        elif slots[key] not in text and all(word in text for word in _names_in(question, slots)):
            passage.unanswered.append((question, slots[key]))
    return passage


def _names_in(question: str, slots: dict) -> list[str]:
    """The slot values a question mentions (a person, an item): an open question only mentions what the text has."""
    return [str(v) for k, v in slots.items() if k != "title" and str(v) in question and len(str(v)) > 2]


def trade_story(rng: random.Random) -> Passage:
    P, buyer = person(rng), person(rng)
    slots = {"P": P, "P1": P.split()[0], "buyer": buyer, "origin": invented_word(rng, 3),
             "destination": invented_word(rng, 2), "job": rng.choice(JOBS), "day": rng.choice(WEEKDAYS + ["Saturday", "Sunday"]),
             "count": str(rng.randrange(3, 60)), "goods": rng.choice(GOODS), "vehicle": rng.choice(VEHICLES),
             "hours": str(rng.randrange(2, 14)), "obstacle": rng.choice(OBSTACLES), "shop": rng.choice(SHOPS),
             "landmark": rng.choice(LANDMARKS), "price": str(rng.randrange(20, 900)), "inn": f"{invented_word(rng)} {rng.choice(['Arms', 'Lantern', 'Goose', 'Anchor'])}"}
    slots["title"] = rng.choice(["{P1}'s trip to {destination}", "A trip to {destination}", "The {goods} of {origin}"]).format(**slots)
    return _story(rng, TRADE_STORY, TRADE_QUESTIONS, slots)


def club_story(rng: random.Random) -> Passage:
    speaker = person(rng)
    slots = {"club": f"{invented_word(rng)} {rng.choice(CLUB_KINDS)}", "town": invented_word(rng, 3), "season": rng.choice(["spring", "summer", "autumn", "winter"]),
             "day": rng.choice(WEEKDAYS), "hall": rng.choice(HALLS), "P": person(rng), "chair": "", "count": str(rng.randrange(6, 80)),
             "speaker": speaker, "topic": rng.choice(TOPICS), "item": rng.choice(CLUB_ITEMS),
             "price": str(rng.randrange(30, 2000)), "month": rng.choice(MONTHS)}
    slots["chair"] = slots["P"]
    slots["title"] = rng.choice(["Minutes of the {club}", "The {club} meets", "News from {town}"]).format(**slots)
    return _story(rng, CLUB_STORY, CLUB_QUESTIONS, slots)


# ---------------------------------------------------------------- tables written as text

TABLES = {  # caption, row subject, columns: (header, how a value is drawn, how the question asks for it)
    "services": ("Services of {product}", "service", [
        ("port", lambda rng: str(rng.randrange(1100, 9900)), "What is the port of the {row}?"),
        ("owner", lambda rng: rng.choice(GROUPS), "Which group owns the {row}?"),
        ("release", lambda rng: f"{rng.randrange(1, 9)}.{rng.randrange(0, 20)}", "In which release did the {row} ship?"),
        ("language", lambda rng: rng.choice(LANGUAGES), "In which language is the {row} written?")]),
    "timetable": ("Departures from {product} station", "train", [
        ("destination", lambda rng: invented_word(rng, 3), "Where does train {row} go?"),
        ("departs", lambda rng: f"{rng.randrange(5, 23)}:{rng.choice(['05', '15', '20', '35', '40', '55'])}", "When does train {row} leave?"),
        ("platform", lambda rng: str(rng.randrange(1, 14)), "From which platform does train {row} leave?"),
        ("operator", lambda rng: f"{invented_word(rng)} Rail", "Who runs train {row}?")]),
    "stock": ("Stock list of the {product} shop", "item", [
        ("price", lambda rng: f"{rng.randrange(2, 400)} euros", "How much does the {row} cost?"),
        ("in stock", lambda rng: str(rng.randrange(0, 120)), "How many {row}s are in stock?"),
        ("supplier", lambda rng: f"{invented_word(rng)} Works", "Who supplies the {row}?"),
        ("colour", lambda rng: rng.choice(["red", "teal", "ochre", "grey", "violet"]), "What colour is the {row}?")]),
}
ROW_NAMES = {
    "services": lambda rng: f"{invented_word(rng)} {rng.choice(COMPONENT_KINDS)}",
    "timetable": lambda rng: f"{rng.choice('KLMRSTVX')}{rng.randrange(100, 999)}",
    "stock": lambda rng: f"{invented_word(rng)} {rng.choice(['chair', 'lamp', 'kettle', 'shelf', 'rug', 'clock'])}",
}


def _layout(rng: random.Random, headers: list[str], rows: list[list[str]]) -> str:
    """The table as text, in one of three layouts: pipes, comma-separated, or one `key: value` line per row."""
    style = rng.choice(["pipes", "csv", "lines"])
    if style == "pipes":
        return "\n".join("| " + " | ".join(cells) + " |" for cells in [headers, ["---"] * len(headers), *rows])
    if style == "csv":
        return "\n".join(", ".join(cells) for cells in [headers, *rows])
    return "\n".join("; ".join(f"{h}: {v}" for h, v in zip(headers, cells)) for cells in rows)


def table(rng: random.Random) -> Passage:
    """A table of 3-6 rows; one column may be left out, and questions about it (or about a row not listed) stay open."""
    kind = rng.choice(list(TABLES))
    caption, subject, columns = TABLES[kind]
    names: list[str] = []
    count = rng.randrange(3, 7) + 1  # one more than shown: its row is asked about but not listed
    while len(names) < count:
        name = ROW_NAMES[kind](rng)
        names += [name] if name not in names else []
    values = {name: [draw(rng) for _, draw, _ in columns] for name in names}
    shown_columns = sorted(rng.sample(range(len(columns)), len(columns) - rng.choice([0, 1])))
    headers = [subject, *(columns[i][0] for i in shown_columns)]
    title = caption.format(product=invented_word(rng, 3))
    text = f"{title}\n\n" + _layout(rng, headers, [[n, *(values[n][i] for i in shown_columns)] for n in names[:-1]])
    passage = Passage(title, text)
    for name in names:
        for i, (_, _, question) in enumerate(columns):
            answered = name != names[-1] and i in shown_columns
            if answered or values[name][i] not in text:
                (passage.answered if answered else passage.unanswered).append((question.format(row=name), values[name][i]))
    return passage
