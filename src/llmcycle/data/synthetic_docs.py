"""`llmcycle synth --task docs-qa`: a fictional product's documentation and questions about it.

Why our own: RAG is about facts a model has never seen, and every public documentation set is in some
model's training data; it also has to work offline. So we invent a product (a seeded made-up name), its
components (each with a port, a configuration key, the version that introduced it, a request limit, the team
that maintains it and the command that restarts it) and its teams (each with a lead and a meeting day), and
write one Markdown-like page per component and per team. Questions ask for one fact of one page, or combine
two pages (who leads the team that maintains component X: the component page names the team, the team page
names the lead); `gold_ids` lists the pages needed, `hops` how many.

The documentation is a function of the seed alone, built component by component, so more rows only add
components; another seed is another product with other facts (train on one, test on another).
"""

from __future__ import annotations

import random
from pathlib import Path

from ..console import note
from ..errors import UserError
from ..outputs import check_writable, write_jsonl

SYLLABLES = ["tar", "vel", "ora", "quin", "bras", "mol", "zet", "kir", "dun", "phe", "lox", "sar", "mib", "rud", "cav",
             "nel", "gor", "tis", "wen", "yal", "pim", "sto", "fra", "hux", "jor", "lem", "vor", "ast", "bel", "cim"]
KINDS = ["gateway", "scheduler", "indexer", "cache", "broker", "archiver", "monitor", "relay", "compiler", "vault"]
ROLES = ["the entry point for client traffic", "the part that plans background jobs", "the search backend",
         "the in-memory store", "the message bus", "the long-term storage layer", "the health checker",
         "the bridge between regions", "the query planner", "the secret store"]
UNITS = ["requests", "connections", "messages", "jobs", "files"]
TEAM_NAMES = ["Falcon", "Heron", "Otter", "Lynx", "Badger", "Marten", "Osprey", "Puffin", "Walrus", "Ibex", "Kestrel", "Tapir"]
FIRST = ["Amara", "Bastien", "Calla", "Dorian", "Esme", "Florin", "Greta", "Hollis", "Isolde", "Jasper", "Kaia",
         "Leander", "Mireille", "Nico", "Odile", "Piers", "Rhea", "Silas", "Thea", "Ulric", "Wilhelmina", "Xavi"]
LAST = ["Varga", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Ferreira", "Novak", "Haddad", "Kowalski", "Brennan"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
FILLER = ["Like every part of {product}, it writes its logs to the central journal.",
          "Operators should read the release notes before upgrading it.",
          "It can run on a single machine or on a cluster.",
          "Its metrics are exported in the usual format and can be graphed.",
          "Configuration changes take effect after a restart."]
SINGLE = {  # fact -> (question templates, answer field)
    "port": ["What port does the {name} listen on by default?", "Which default port does the {name} use?"],
    "key": ["Under which configuration key are the settings of the {name}?", "What is the configuration key of the {name}?"],
    "version": ["In which version of {product} was the {name} introduced?", "Which {product} version introduced the {name}?"],
    "limit": ["How many {unit} per minute does the {name} accept at most?", "What is the per-minute limit of the {name}?"],
    "team": ["Which team maintains the {name}?", "Who maintains the {name}?"],
    "command": ["Which command restarts the {name}?", "How do you restart the {name}?"],
}
DOUBLE = {  # fact of the team page asked through the component page
    "lead": ["Who leads the team that maintains the {name}?", "Who is the lead of the team responsible for the {name}?"],
    "day": ["On which day does the team that maintains the {name} meet?", "What day does the team behind the {name} meet?"],
}


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def _team(rng: random.Random, name: str, used: set[str]) -> dict:
    lead = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    while lead in used:
        lead = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    used.add(lead)
    return {"name": name, "lead": lead, "day": rng.choice(DAYS), "room": _word(rng, 2)}


def _component(rng: random.Random, product: str, teams: list[dict], used: set[str]) -> dict:
    while True:
        base, kind_index = _word(rng, 2), rng.randrange(len(KINDS))
        name = f"{base} {KINDS[kind_index]}"
        if base not in used:  # the base names the page and the restart command, so it is unique
            used.add(base)
            break
    slug = base.lower()
    unit = rng.choice(UNITS)
    return {
        "name": name, "slug": slug, "role": ROLES[kind_index], "port": str(rng.randrange(1024, 9999)),
        "key": f"{product.lower()}.{slug}.{rng.choice(['pool', 'queue', 'window', 'batch', 'shards'])}",
        "version": f"{rng.randrange(1, 6)}.{rng.randrange(0, 10)}", "unit": unit,
        "limit": f"{rng.randrange(2, 100) * 10} {unit}", "team": rng.choice(teams)["name"],
        "command": f"{product.lower()} restart {slug}", "filler": rng.sample(FILLER, 2),
    }


def documentation(seed: int, components: int) -> tuple[str, list[dict], list[dict]]:
    """(product name, teams, components); the first N components are the same for any larger count."""
    rng = random.Random(f"llmcycle/docs-qa/{seed}")
    product = _word(rng, 3)
    used_leads: set[str] = set()
    teams = [_team(rng, name, used_leads) for name in rng.sample(TEAM_NAMES, 6)]
    used_names: set[str] = set()
    return product, teams, [_component(rng, product, teams, used_names) for _ in range(components)]


def component_page(product: str, c: dict) -> dict:
    name = f"The {c['name']}"
    sentences = [
        f"{name} is {c['role']} of {product}.", f"{name} listens on port {c['port']} by default.",
        c["filler"][0].format(product=product), f"The settings of the {c['name']} live under the configuration key {c['key']}.",
        f"{name} was introduced in {product} version {c['version']}.",
        f"{name} accepts at most {c['limit']} per minute.", f"{name} is maintained by the {c['team']} team.",
        c["filler"][1].format(product=product), f"To restart the {c['name']}, run {c['command']}.",
    ]
    text = f"# {c['name']}\n\n" + " ".join(sentences[:4]) + "\n\n" + " ".join(sentences[4:]) + "\n"
    return {"id": f"component-{c['slug']}", "title": f"{product} {c['name']}", "text": text, "source": f"components/{c['slug']}.md"}


def team_page(product: str, team: dict, components: list[dict]) -> dict:
    owned = [c["name"] for c in components if c["team"] == team["name"]]
    text = (f"# The {team['name']} team\n\nThe {team['name']} team is led by {team['lead']}. "
            f"The {team['name']} team meets every {team['day']} in the {team['room']} room. "
            f"It looks after {len(owned)} components of {product}.\n")
    return {"id": f"team-{team['name'].lower()}", "title": f"{product} {team['name']} team", "text": text,
            "source": f"teams/{team['name'].lower()}.md"}


def questions(product: str, teams: list[dict], components: list[dict], rng: random.Random) -> list[dict]:
    by_team = {team["name"]: team for team in teams}
    rows = []
    for c in components:
        slots = {"name": c["name"], "product": product, "unit": c["unit"]}
        page = f"component-{c['slug']}"
        for fact, forms in SINGLE.items():
            rows.append(_qa(rng.choice(forms).format(**slots), c[fact], [page], 1))
        team = by_team[c["team"]]
        for fact, forms in DOUBLE.items():
            rows.append(_qa(rng.choice(forms).format(**slots), team[fact], [page, f"team-{team['name'].lower()}"], 2))
    return rows


def _qa(question: str, answer: str, gold_ids: list[str], hops: int) -> dict:
    return {"question": question, "answers": [answer], "gold_ids": gold_ids, "hops": hops,
            "prompt": f"Question: {question}\nAnswer:", "completion": answer}


def docs_qa(rows: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(documentation pages, `rows` question/answer rows); pages as JSONL documents (id, title, text, source)."""
    per_component = len(SINGLE) + len(DOUBLE)
    count = max(8, -(-rows // per_component))
    product, teams, components = documentation(seed, count)
    pages = [component_page(product, c) for c in components] + [team_page(product, t, components) for t in teams]
    rng = random.Random(f"llmcycle/docs-qa/questions/{seed}")
    qa = questions(product, teams, components, rng)
    rng.shuffle(qa)
    return pages, qa[:rows]


def docs_path(out: Path) -> Path:
    """Where the documentation goes beside the questions: qa.jsonl -> qa.docs.jsonl."""
    return out.with_name(out.stem + ".docs.jsonl")


def write_docs_qa(out: Path, rows: int, seed: int) -> Path:
    """Questions to `out`, the documentation beside it (see docs_path); both written atomically."""
    if out.suffix.lower() != ".jsonl":
        raise UserError(f"--out {out}: write .jsonl for --task docs-qa (the documentation goes beside it)")
    docs = docs_path(out)
    check_writable(docs)
    pages, qa = docs_qa(rows, seed)
    write_jsonl(docs, pages)
    write_jsonl(out, qa)
    note(f"wrote {len(pages)} documentation pages to {docs} and {len(qa)} questions to {out}")
    return out
