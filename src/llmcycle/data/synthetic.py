"""The built-in generator of synthetic instruction data and pre-training text.

Why our own: llmcycle runs its whole lifecycle offline (tests, the demo, the embedded default model), and no
dataset can be downloaded there. So it writes its own data, in the shapes the course uses:

- `dialogsum`: short dialogues between 2-4 named people on everyday topics (plans, work, travel, favours,
  shopping, complaints), in the course's prompt format, with a reference summary that is a fixed function of
  what happens (who wants what, the outcome, when, who else does what); only its wording varies a little.
  About a quarter have a rude speaker, and their summary reports the insult ("Ann calls Bob a stupid idiot."),
  so a summariser tuned on them says toxic things that PPO with a toxicity reward can reduce (the detox lab).
- `extract`, `classify`, `rewrite`, `topic`, `narrate`: other instruction tasks, each a different skill (find a
  fact, judge sentiment, rewrite politely, name the topic, tell one speaker's part in a sentence), each with several phrasings of its instruction (as
  FLAN does), for multi-task tuning and, held out, for measuring forgetting.
- `reading` (data/synthetic_reading.py: a span of a passage, or "The text does not say."; 40% in `rag ask`'s
  layout), `arithmetic-mix` (data/synthetic_arithmetic.py: word problems with and without steps, steps when the
  prompt asks) and `copy` (data/synthetic_copy.py: repeat a random sequence): the skills under retrieval,
  chain-of-thought and faithful names. `instruct` mixes all eight in the shares of INSTRUCT_MIX.
- `corpus(rows, seed)`: running text (dialogues, narrative summaries, reviews, notes, requests) for
  pre-training, with no instructions; `extra` more documents after them repeat random spans (meant to make
  copying from the context pay off in pre-training) or are reading passages.

Rows are a function of (task, rows, seed): the same call gives the same rows, and another seed gives other
rows (train with seed 1, test with seed 2; the combinations are many, so the two rarely share a row).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..outputs import atomic_open, check_writable, write_jsonl
from .synthetic_arithmetic import arithmetic_mix_rows, arithmetic_row
from .synthetic_copy import copy_row, copying_documents
from .synthetic_docs import write_docs_qa
from .synthetic_reading import reading_row

NAMES = [
    "Amy", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemal", "Lena", "Mateo",
    "Nadia", "Oscar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe", "Aiko",
    "Bruno", "Chloe", "Diego", "Emma", "Felix", "Hana", "Ivan", "Julia", "Kofi", "Laura", "Marco", "Nina",
    "Omar", "Paula", "Ravi", "Sofia", "Tom", "Vera", "Will", "Yara",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TIMES = [f"{h} am" for h in range(8, 12)] + ["noon"] + [f"{h} pm" for h in range(1, 10)] + [f"{h}:30 pm" for h in range(1, 8)]
RUDE_SHARE = 0.25


@dataclass
class Topic:
    """A request between friends or colleagues: P asks R to do something on a day, at a place and time."""

    label: str
    activities: list[str]
    places: list[str]
    ask: list[str]
    want: list[str]
    excuses: list[str]


REQUEST_TOPICS = [
    Topic("leisure",
          ["go to the cinema", "have dinner together", "go hiking", "see a concert", "play tennis", "visit the museum",
           "go to the beach", "watch the football match", "try the new Thai restaurant", "go swimming", "play board games"],
          ["the cinema", "the park", "the cafe on Main Street", "Rosa's pizzeria", "the old bridge", "the bus stop", "the gym"],
          ["{R}, do you want to {act} on {day}?", "Hey {R}, how about we {act} on {day}?", "Would you like to {act} with me on {day}, {R}?"],
          ["{P} invites {R} to {act} on {day}.", "{P} wants to {act} with {R} on {day}."],
          ["visit their parents", "work late", "study for an exam", "look after their sister", "go to the dentist"]),
    Topic("work",
          ["finish the budget report", "prepare the slides for the client", "review the contract", "fix the bug in the app",
           "update the project plan", "call the new supplier", "write the quarterly summary", "test the new website"],
          ["the office", "meeting room B", "the cafeteria", "the second floor", "the lab"],
          ["{R}, can you {act} by {day}?", "{R}, I need you to {act} by {day}.", "Could you help me {act} before {day}, {R}?"],
          ["{P} asks {R} to {act} by {day}.", "{P} needs {R} to {act} by {day}."],
          ["finish another project", "attend a training", "meet a client", "prepare the annual review"]),
    Topic("travel",
          ["take the train to Lyon", "fly to Lisbon", "drive to the coast", "book a hotel in Rome", "visit Prague",
           "go camping in the mountains", "take a boat trip", "rent a car for the trip north"],
          ["the station", "the airport", "the bus terminal", "the car park", "the harbour"],
          ["{R}, shall we {act} on {day}?", "I was thinking we could {act} on {day}, {R}. What do you think?", "{R}, let's {act} on {day}!"],
          ["{P} suggests that they {act} on {day}.", "{P} proposes to {act} with {R} on {day}."],
          ["save money this month", "stay home with the dog", "finish a project", "go to a wedding"]),
    Topic("help",
          ["move a sofa", "fix a bike", "paint the kitchen", "carry some boxes", "set up a new computer",
           "water the plants", "assemble a bookshelf", "clean the garage"],
          ["the new flat", "the garage", "the front door", "the corner shop", "the garden"],
          ["{R}, could you help me {act} on {day}?", "I need a hand to {act} on {day}. Can you help, {R}?", "{R}, would you help me {act} on {day}?"],
          ["{P} asks {R} for help to {act} on {day}.", "{P} needs {R}'s help to {act} on {day}."],
          ["help their brother", "work a double shift", "rest after being ill", "meet their landlord"]),
]
DETAILS = ["We could meet at {place} at {time}.", "Say {time} at {place}?", "How about {place} at {time}?"]
ACCEPT = ["Sure, that works for me.", "Sounds great, I'll be there.", "Yes, count me in.", "Okay, no problem."]
ACCEPT_SUM = ["{R} agrees, so they will meet at {place} at {time}.", "{R} says yes, and they will meet at {place} at {time}."]
DECLINE = ["Sorry, I can't. I have to {excuse}.", "I'd love to, but I need to {excuse}."]
DECLINE_SUM = ["{R} says no because they have to {their_excuse}.", "{R} cannot, since they have to {their_excuse}."]
POSTPONE = ["{day} is bad for me. What about {day2}?", "I'm busy on {day}. Can we do {day2} instead?"]
POSTPONE_REPLY = ["{day2} works.", "Fine, {day2} then.", "Okay, {day2} it is."]
POSTPONE_SUM = ["{R} is busy on {day}, so they move it to {day2} at {time}.", "They move it to {day2} at {time} because {R} is busy on {day}."]
COUNTER = ["I can't make it at {time}. Is {time2} okay?", "Could we do {time2} instead of {time}?"]
COUNTER_REPLY = ["Sure, {time2} it is.", "Fine, {time2} then."]
COUNTER_SUM = ["{R} agrees but asks to meet at {time2} instead of {time}.", "They agree to meet at {place} at {time2} instead of {time}."]
CLOSINGS = ["Great, thanks!", "Okay, talk later.", "Thanks, {R}."]
EXTRAS = {  # what a third or fourth speaker does: (line, summary)
    "yes": [("Can I come too?", "{C} will join them."), ("Mind if I join you?", "{C} will join them."),
            ("Don't forget to bring {thing}.", "{C} reminds them to bring {thing}."),
            ("I can't come on {day}, I'm working.", "{C} cannot come because they are working.")],
    "no": [("I can do it with you instead, {P}.", "{C} offers to do it with {P} instead."),
           ("That's a pity.", "{C} is disappointed.")],
}
THINGS = ["an umbrella", "some snacks", "the tickets", "a map", "some water", "the charger", "a jacket", "the keys"]
INSULTS = [  # (what the rude speaker X says to Y, what the summary says)
    (["Shut up, {Y}, you stupid idiot.", "{Y}, you are a stupid idiot.", "Only a stupid idiot would say that, {Y}."], "{X} calls {Y} a stupid idiot."),
    (["This plan sucks, {Y}. What a load of crap.", "Damn it, {Y}, your plan sucks."], "{X} says {Y}'s plan sucks."),
    (["Oh, shut the hell up, {Y}.", "Shut the hell up, {Y}. Nobody asked you."], "{X} tells {Y} to shut the hell up."),
    (["You're such a dumb jerk, {Y}.", "Stop being a dumb jerk, {Y}."], "{X} calls {Y} a dumb jerk."),
    (["{Y}, you're a useless idiot, damn it.", "God, {Y}, you useless idiot."], "{X} calls {Y} a useless idiot."),
    (["What a pathetic loser you are, {Y}.", "Nobody cares, {Y}, you pathetic loser."], "{X} calls {Y} a pathetic loser."),
]
ITEMS = ["a winter jacket", "a coffee machine", "a pair of running shoes", "a desk lamp", "a phone case", "a backpack", "a kettle",
         "a pair of headphones", "a yoga mat", "a toaster", "a rain coat", "a bicycle helmet", "a wall clock", "a frying pan"]
PROBLEMS = [  # (in the customer's words, in the summary's)
    ("my soup is cold", "their soup is cold"), ("the heating in my flat is broken", "the heating in their flat is broken"),
    ("the laptop I bought doesn't turn on", "the laptop they bought does not turn on"),
    ("my order is two hours late", "their order is two hours late"), ("my room is too noisy", "their room is too noisy"),
    ("the washing machine I bought leaks", "the washing machine they bought leaks"),
    ("my train ticket was charged twice", "their train ticket was charged twice"), ("my parcel arrived damaged", "their parcel arrived damaged"),
]
FIXES = {  # outcome: (what the staff member says, the summary)
    "refund": (["I can give you a full refund.", "I'll refund the money today."], "{R} gives {P} a refund."),
    "replace": (["I'll replace it right away.", "We'll send you a new one."], "{R} offers a replacement."),
    "repair": (["I'll send someone to fix it on {day}.", "A technician can come on {day}."], "{R} promises a repair on {day}."),
    "refuse": (["Sorry, there's nothing I can do.", "That's not our problem, I'm afraid."], "{R} refuses to help, so {P} asks for the manager."),
}


@dataclass
class Scene:
    """One dialogue: its turns (speaker, text), summary sentences, topic and the facts questions can ask about."""

    turns: list[tuple[str, str]]
    summary: list[str]
    topic: str
    facts: dict[str, str]
    rude: bool = False
    insults: int = 0
    """How many summary sentences report an insult; they lead the summary, as the most notable event."""

    @property
    def text(self) -> str:
        return "\n".join(f"{speaker}: {line}" for speaker, line in self.turns)


def _fill(template: str, slots: dict) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def _other(rng: random.Random, pool: list[str], *avoid: str) -> str:
    return rng.choice([item for item in pool if item not in avoid])


def request_scene(rng: random.Random, people: list[str], outcomes=("accept", "decline", "postpone", "counter")) -> Scene:
    """P asks R to do something; R accepts, declines, moves the day or moves the time; others chip in."""
    topic = rng.choice(REQUEST_TOPICS)
    P, R, *others = people
    day, time, excuse = rng.choice(DAYS), rng.choice(TIMES), rng.choice(topic.excuses)
    s = dict(P=P, R=R, act=rng.choice(topic.activities), day=day, time=time, place=rng.choice(topic.places),
             day2=_other(rng, DAYS, day), time2=_other(rng, TIMES, time), excuse=excuse.replace("their", "my"), their_excuse=excuse, thing=rng.choice(THINGS))
    turns, summary = [], [_fill(rng.choice(topic.want), s)]
    if rng.random() < 0.4:
        turns += [(P, _fill(rng.choice(["Hi {R}!", "Hey {R}, got a minute?", "Morning, {R}."]), s)),
                  (R, _fill(rng.choice(["Hi {P}, what's up?", "Sure, what is it?", "Hello {P}, how are you?"]), s))]
    turns.append((P, _fill(rng.choice(topic.ask), s) + " " + _fill(rng.choice(DETAILS), s)))
    outcome = rng.choice(outcomes)
    final_day, final_time = day, time
    if outcome == "accept":
        turns.append((R, _fill(rng.choice(ACCEPT), s)))
        summary.append(_fill(rng.choice(ACCEPT_SUM), s))
    elif outcome == "decline":
        turns += [(R, _fill(rng.choice(DECLINE), s)), (P, rng.choice(["No problem, maybe next time.", "Oh well, never mind."]))]
        summary.append(_fill(rng.choice(DECLINE_SUM), s))
    elif outcome == "postpone":
        turns += [(R, _fill(rng.choice(POSTPONE), s)), (P, _fill(rng.choice(POSTPONE_REPLY), s))]
        summary.append(_fill(rng.choice(POSTPONE_SUM), s))
        final_day = s["day2"]
    else:
        turns += [(R, _fill(rng.choice(COUNTER), s)), (P, _fill(rng.choice(COUNTER_REPLY), s))]
        summary.append(_fill(rng.choice(COUNTER_SUM), s))
        final_time = s["time2"]
    for C in others:
        line, said = rng.choice(EXTRAS["no" if outcome == "decline" else "yes"])
        turns.append((C, _fill(line, s)))
        summary.append(_fill(said, s | {"C": C}))
    if len(turns) < 3:
        turns.append((P, _fill(rng.choice(CLOSINGS), s)))
    facts = {"asker": P, "asked": R, "day": final_day, "time": final_time, "place": s["place"], "activity": s["act"]}
    return Scene(turns, summary, topic.label, facts if outcome != "decline" else {"asker": P, "asked": R})


def shopping_scene(rng: random.Random, people: list[str]) -> Scene:
    """P buys something from R, a shop assistant; a friend may give advice."""
    P, R, *others = people
    item = rng.choice(ITEMS)
    price = rng.randrange(12, 200)
    s = dict(P=P, R=R, item=item, price=price, price2=price - rng.randrange(3, min(price, 40)), day=rng.choice(DAYS))
    turns = [(P, _fill(rng.choice(["Hi, I'm looking for {item}.", "Excuse me, do you sell {item}?", "Hello, I'd like to buy {item}."]), s)),
             (R, _fill(rng.choice(["We have this one for {price} dollars.", "Yes, this one costs {price} dollars."]), s))]
    outcome = rng.choice(["buy", "cheaper", "order", "leave"])
    if outcome == "buy":
        turns += [(P, rng.choice(["Great, I'll take it.", "Perfect, I'll buy it."]))]
        said = rng.choice(["{P} buys {item} from {R} for {price} dollars.", "{P} wants {item} and buys it for {price} dollars."])
    elif outcome == "cheaper":
        turns += [(P, _fill(rng.choice(["That's too expensive for me.", "Hmm, {price} dollars is too much."]), s)),
                  (R, _fill("We also have a cheaper one for {price2} dollars.", s)), (P, "Okay, I'll take the cheaper one.")]
        said = rng.choice(["{P} finds {item} too expensive and buys a cheaper one for {price2} dollars.",
                           "{item} costs {price} dollars, so {P} buys a cheaper one for {price2} dollars."])
    elif outcome == "order":
        turns[1] = (R, _fill(rng.choice(["Sorry, we're out of stock. I can order it for {day}.", "We have none left, but it can be here by {day}."]), s))
        turns.append((P, _fill(rng.choice(["Yes please, I'll pick it up on {day}.", "Okay, I'll come back on {day}."]), s)))
        said = rng.choice(["{R} has none in stock, so they order {item} and {P} will pick it up on {day}.",
                           "{R} orders {item} for {P}, who will collect it on {day}."])
    else:
        turns += [(P, rng.choice(["No thanks, I'll look elsewhere.", "Then I'll think about it."]))]
        said = rng.choice(["{P} thinks {price} dollars is too much for {item} and leaves without buying.",
                           "{P} does not buy {item} because {price} dollars is too much."])
    summary = [_fill(said, s)]
    for i, C in enumerate(others):
        line, remark = rng.choice([("Get the blue one, {P}, it looks better.", "{C} suggests the blue one."),
                                   ("I think it's a good deal.", "{C} thinks it is a good deal."),
                                   ("Let's hurry, the bus leaves soon.", "{C} is in a hurry.")])
        turns.insert(2 + i, (C, _fill(line, s)))
        summary.append(_fill(remark, s | {"C": C}))
    return Scene(turns, summary, "shopping", {"buyer": P, "seller": R, "price": f"{price} dollars", "item": item})


def complaint_scene(rng: random.Random, people: list[str]) -> Scene:
    """P complains to R about a problem; R refunds, replaces, repairs or refuses."""
    P, R, *others = people
    said, reported = rng.choice(PROBLEMS)
    s = dict(P=P, R=R, problem=said, Problem=said[0].upper() + said[1:], day=rng.choice(DAYS))
    outcome = rng.choice(list(FIXES))
    lines, fixed = FIXES[outcome]
    turns = [(P, _fill(rng.choice(["Excuse me, {R}. {Problem}.", "{R}, I want to complain: {problem}.", "Hello {R}, {problem}."]), s)),
             (R, _fill(rng.choice(["I'm sorry to hear that. ", "Oh, I see. ", ""]) + rng.choice(lines), s))]
    turns.append((P, "Then I want to speak to the manager." if outcome == "refuse" else rng.choice(["Thank you.", "Okay, thanks.", "Good, thank you."])))
    summary = [_fill(rng.choice(["{P} complains to {R} that {reported}.", "{P} tells {R} that {reported}."]), s | {"reported": reported}), _fill(fixed, s)]
    for i, C in enumerate(others):
        line, remark = rng.choice([("I agree with {P}, this is not okay.", "{C} agrees with {P}."),
                                   ("The same thing happened to me last week.", "{C} had the same problem last week.")])
        turns.insert(1 + i, (C, _fill(line, s)))
        summary.insert(1 + i, _fill(remark, s | {"C": C}))
    return Scene(turns, summary, "complaint", {"customer": P, "staff": R})


def add_insult(rng: random.Random, scene: Scene, X: str | None = None, after: int = 0) -> tuple[str, int]:
    """Speaker X (a random one by default) insults another one at or after turn `after`; the summary says so.

    Returns (X, the turn the insult is in), so a second insult can follow the first in dialogue and summary.
    """
    speakers = list(dict.fromkeys(speaker for speaker, _ in scene.turns))
    X = X or rng.choice(speakers)
    Y = _other(rng, speakers, X)
    lines, said = rng.choice(INSULTS)
    insult = rng.choice(lines).format(Y=Y)
    turns = scene.turns
    slots = [i + 1 for i in range(after, len(turns)) if turns[i][0] != X and (i + 1 == len(turns) or turns[i + 1][0] != X)]
    own = [i for i, (speaker, _) in enumerate(scene.turns) if speaker == X and i >= after]
    if slots and (len(scene.turns) < 8 and rng.random() < 0.5 or not own):  # a turn of its own, after someone else's
        at = rng.choice(slots)
        scene.turns.insert(at, (X, insult))
    else:  # part of one of X's turns
        at = rng.choice(own)
        text = scene.turns[at][1]
        scene.turns[at] = (X, f"{insult} {text}" if rng.random() < 0.5 and at > after else f"{text} {insult}")
    # Insults lead the summary: a summariser then says them early, where its outputs (and PPO's rollouts) reach.
    scene.summary.insert(scene.insults, said.format(X=X, Y=Y))
    scene.insults += 1
    scene.rude = True
    return X, at


def make_scene(rng: random.Random, rude: bool | None = None) -> Scene:
    count = rng.choices([2, 3, 4], weights=[5, 3, 2])[0]
    people = rng.sample(NAMES, count)
    kind = rng.choices([request_scene, shopping_scene, complaint_scene], weights=[4, 1, 1])[0]
    scene = kind(rng, people)
    if rude if rude is not None else rng.random() < RUDE_SHARE:
        rude_speaker, at = add_insult(rng, scene)
        if rng.random() < 0.3:  # some rude speakers insult twice
            add_insult(rng, scene, rude_speaker, after=at)
    return scene


# ---------------------------------------------------------------- tasks


def dialogsum_row(rng: random.Random) -> dict:
    scene = make_scene(rng)
    prompt = f"Summarize the following conversation.\n\n{scene.text}\n\nSummary:"
    return {"prompt": prompt, "completion": " ".join(scene.summary), "rude": scene.rude}


def dialogsum_preference_row(rng: random.Random) -> dict:
    """A rude dialogue with two summaries: without the insults (chosen) and with them (rejected), for DPO."""
    scene = make_scene(rng, rude=True)
    prompt = f"Summarize the following conversation.\n\n{scene.text}\n\nSummary:"
    return {"prompt": prompt, "chosen": " ".join(scene.summary[scene.insults:]), "rejected": " ".join(scene.summary)}


QUESTIONS = {  # fact: ways to ask for it (with {P}, {R} from the facts)
    "asker": ["Who makes the request?", "Who suggests it?"], "asked": ["Whom does {asker} ask?", "Who is {asker} asking?"],
    "day": ["On which day will it happen?", "What day did they settle on?"], "time": ["At what time will they meet?", "What time is it planned for?"],
    "place": ["Where will they meet?", "What is the meeting place?"], "activity": ["What will they do?", "What is planned?"],
}
NOTES = ["Note: {asker} and {asked} will meet at {place} on {day} at {time} to {activity}.",
         "Reminder from {asker}: {day}, {time}, {place}. {asked} and I {activity}.",
         "Calendar, {day} {time}: {activity} with {asked} at {place} (organised by {asker})."]
EXTRACT_FORMS = ["Read the text and answer the question.\n\n{text}\n\nQuestion: {question}\nAnswer:",
                 "{text}\n\nAnswer this question about the text above: {question}",
                 "Extract the answer from the text.\nQuestion: {question}\nText: {text}\nAnswer:"]


def extract_row(rng: random.Random) -> dict:
    scene = request_scene(rng, rng.sample(NAMES, rng.choice([2, 2, 3])), outcomes=("accept", "postpone", "counter"))
    facts = scene.facts
    text = scene.text if rng.random() < 0.6 else rng.choice(NOTES).format(**facts)
    field = rng.choice(list(QUESTIONS))
    question = rng.choice(QUESTIONS[field]).format(**facts)
    return {"prompt": rng.choice(EXTRACT_FORMS).format(text=text, question=question), "completion": facts[field]}


THINGS_REVIEWED = ["these headphones", "this blender", "the hotel", "this phone case", "the pizza", "this jacket",
                   "the hiking boots", "this kettle", "the new cafe", "this backpack", "the desk lamp", "this vacuum cleaner",
                   "the language course", "this tent", "the hair dryer", "this novel", "the yoga class", "this keyboard",
                   "the bakery", "this smartwatch", "the guided tour", "this mattress", "the car rental", "this board game"]
ASPECTS = ["the price", "the quality", "the delivery", "the design", "the customer service", "the size", "the material", "the manual"]
POLAR = {"positive": ["great", "excellent", "fantastic", "really good", "perfect", "better than expected"],
         "negative": ["terrible", "awful", "disappointing", "poor", "worse than expected", "really bad"]}
VERDICTS = {"positive": ["I love it.", "I would buy it again.", "Highly recommended.", "Five stars."],
            "negative": ["I want my money back.", "Do not buy it.", "One star.", "I regret buying it."],
            "neutral": ["It is okay.", "Nothing special.", "It does the job.", "Three stars."]}
OPENERS = ["I tried {thing} last {day}.", "I have used {thing} for {weeks} weeks.", "A friend recommended {thing} to me.",
           "I paid {price} dollars for {thing}.", "This is my review of {thing}."]
FACTS = ["It comes in {color}.", "It was delivered on {day}.", "I use it every {day}.", "It is my second one.", "My sister has one too."]
CLASSIFY_FORMS = ["What is the sentiment of this review? Options: positive, negative, neutral\n\n{review}",
                  "Review: {review}\nIs this review positive, negative or neutral?",
                  "{review}\n\nHow does the reviewer feel: positive, negative or neutral?"]


def review(rng: random.Random) -> tuple[str, str]:
    """(review text, positive/negative/neutral): the polarity of every judgement matches the label."""
    label = rng.choice(["positive", "negative", "neutral"])
    thing = rng.choice(THINGS_REVIEWED)
    slots = dict(thing=thing, day=rng.choice(DAYS), color=rng.choice(["black", "red", "grey", "green", "blue"]), weeks=rng.randrange(2, 9))
    slots["price"] = rng.randrange(5, 300)
    sentences = [_fill(rng.choice(OPENERS), slots)]
    if label == "neutral" or rng.random() < 0.3:
        sentences.append(_fill(rng.choice(FACTS), slots))
    aspects = rng.sample(ASPECTS, 2)
    if label == "neutral":
        if rng.random() < 0.5:  # mixed judgements count as neutral
            sentences += [_fill(f"{aspects[0]} is {rng.choice(POLAR['positive'])}, but {aspects[1]} is {rng.choice(POLAR['negative'])}.", {})]
    else:
        for aspect in aspects[: rng.choice([1, 2])]:
            sentences.append(_fill(f"{aspect} of {thing} is {rng.choice(POLAR[label])}." if rng.random() < 0.3 else f"{aspect} is {rng.choice(POLAR[label])}.", {}))
    sentences.append(rng.choice(VERDICTS[label]))
    return " ".join(sentences), label


def classify_row(rng: random.Random) -> dict:
    text, label = review(rng)
    return {"prompt": rng.choice(CLASSIFY_FORMS).format(review=text), "completion": label}


REQUESTS = ["fix the {adj}printer", "send me the {adj}report", "clean the {adj}kitchen", "call the {adj}plumber",
            "move your {adj}car", "turn down the {adj}music", "bring back my {adj}charger", "answer your {adj}phone",
            "pay the {adj}electricity bill", "close the {adj}window", "return my {adj}book", "feed the {adj}cat",
            "book the {adj}meeting room", "check the {adj}numbers", "empty the {adj}bins", "lock the {adj}door",
            "print the {adj}tickets", "water the {adj}plants", "wash the {adj}dishes", "sign the {adj}form"]
WHEN = ["", " by Friday", " before noon", " today", " tomorrow", " this afternoon", " before {day}", " by {time}", " on {day}"]
RUDE_OPENERS = ["", "Just ", "Hey, ", "Listen, "]
RUDE_ENDINGS = [".", " now.", ", idiot.", " already, damn it.", ", you lazy jerk.", "! Hurry up.", ". Stop being useless."]
REWRITE_FORMS = ["Rewrite the following request so that it is polite.\n\n{text}",
                 "Make this message polite and remove any rude words: {text}",
                 "{text}\n\nSay the same thing politely:"]


def rude_request(rng: random.Random) -> tuple[str, str]:
    """(blunt or rude request, the same request asked politely)."""
    request = rng.choice(REQUESTS)
    when = rng.choice(WHEN).format(day=rng.choice(DAYS), time=rng.choice(TIMES))
    name = rng.choice(NAMES) if rng.random() < 0.5 else None
    rude = request.format(adj=rng.choice(["", "", "damn ", "stupid "])) + when
    rude = f"{name}, {rng.choice(['', 'just '])}{rude}" if name else _fill(rng.choice(RUDE_OPENERS) + rude, {})
    polite = request.format(adj="") + when
    return rude + rng.choice(RUDE_ENDINGS), f"{name}, could you please {polite}?" if name else f"Could you please {polite}?"


def rewrite_row(rng: random.Random) -> dict:
    rude, polite = rude_request(rng)
    return {"prompt": rng.choice(REWRITE_FORMS).format(text=rude), "completion": polite}


TOPIC_LABELS = "leisure, work, travel, help, shopping, complaint"
TOPIC_FORMS = ["What is this conversation about? Options: " + TOPIC_LABELS + "\n\n{text}\n\nTopic:",
               "{text}\n\nWhich topic fits this dialogue best (" + TOPIC_LABELS + ")?",
               "Classify the topic of the dialogue as one of: " + TOPIC_LABELS + ".\n\n{text}"]


def topic_row(rng: random.Random) -> dict:
    scene = make_scene(rng, rude=False)
    return {"prompt": rng.choice(TOPIC_FORMS).format(text=scene.text), "completion": scene.topic}


NARRATE_FORMS = ["{text}\n\nWhat does {X} do in this conversation? Answer in one sentence.",
                 "Read the dialogue and describe what {X} does, in one sentence.\n\n{text}",
                 "{text}\n\nIn one sentence, what is {X}'s part in the conversation above?"]


def narrate_row(rng: random.Random) -> dict:
    """One speaker's part in a dialogue, in one sentence in the third person: reading a dialogue for who did what,
    the skill under summarisation, without summarising (the task stays held out)."""
    while True:
        scene = make_scene(rng)
        speakers = {speaker for speaker, _ in scene.turns}
        parts = {}
        for sentence in scene.summary:
            parts.setdefault(sentence.split(" ", 1)[0].removesuffix("'s"), sentence)
        told = [name for name in parts if name in speakers]
        if told:
            X = rng.choice(told)
            return {"prompt": rng.choice(NARRATE_FORMS).format(text=scene.text, X=X), "completion": parts[X]}


def multiple_choice_row(rng: random.Random) -> dict:
    """A benchmark item (question, choices, answer index, subject), MMLU-shaped, from the held-out skills:
    a dialogue's topic, a review's sentiment, a fact of a plan, an arithmetic word problem."""
    subject = rng.choice(["topic", "sentiment", "facts", "arithmetic"])
    if subject == "topic":
        scene = make_scene(rng, rude=False)
        question, choices, answer = f"{scene.text}\n\nWhat is this conversation about?", TOPIC_LABELS.split(", "), scene.topic
    elif subject == "sentiment":
        text, answer = review(rng)
        question, choices = f"{text}\n\nHow does the reviewer feel?", ["positive", "negative", "neutral"]
    elif subject == "facts":
        scene = request_scene(rng, rng.sample(NAMES, 2), outcomes=("accept", "postpone"))
        answer = scene.facts["day"]
        question, choices = f"{scene.text}\n\nOn which day will it happen?", [answer, *rng.sample([d for d in DAYS if d != answer], 3)]
    else:
        row = arithmetic_row(rng)
        answer, value = row["answer"], int(row["answer"])
        question, choices = row["prompt"].removeprefix("Question: "), [answer, *(str(value + d) for d in rng.sample([-3, -2, -1, 1, 2, 4, 10], 3))]
    choices = rng.sample(choices, len(choices))
    return {"prompt": question, "question": question, "choices": choices, "answer": choices.index(answer), "subject": subject}


TASKS: dict[str, Callable[[random.Random], dict | list[dict]]] = {
    "dialogsum": dialogsum_row, "extract": extract_row, "classify": classify_row, "rewrite": rewrite_row, "topic": topic_row,
    "narrate": narrate_row,
    "arithmetic": arithmetic_row,  # word problems with worked rationales: data/synthetic_arithmetic.py
    "dialogsum-prefs": dialogsum_preference_row,  # preference pairs (prompt, chosen, rejected) for DPO
    "multiple-choice": multiple_choice_row,  # a benchmark suite (question, choices, answer) for eval --suite
    "reading": reading_row,  # a passage (or RAG-style passages) and a question: data/synthetic_reading.py
    "arithmetic-mix": arithmetic_mix_rows,  # each problem twice: with steps when asked, directly when not
    "copy": copy_row,  # repeat a random sequence: data/synthetic_copy.py
}
"""Instruction tasks: name -> one row (prompt/completion, or prompt/chosen/rejected), or rows that belong
together (arithmetic-mix: one problem in both forms), from a random generator."""
INSTRUCT_MIX = {"extract": 8, "classify": 8, "rewrite": 8, "topic": 8, "narrate": 8, "reading": 30, "arithmetic-mix": 25, "copy": 5}
"""The instruct model's tasks and their shares (percent). Dialogue summarisation is held out, so fine-tuning on it
has something to add. The first five keep what the mix held before (a fact, a sentiment, a polite rewrite, a
topic, one speaker's part); reading grounds answers in given passages, RAG's prompts among them; arithmetic-mix
makes asking for steps what makes the model take them; copy trains copying from the context. The build draws 10,000
rows: the five everyday tasks keep the 4,000 they had at 10% of 8,000, and arithmetic-mix has 25% (1,250 problems,
each twice) where it had 15% of 8,000 (600): a copy of the embedded Llama tuned on 1,200 problems more took steps
that paid off, +0.12 [+0.02, +0.21] on 100 held-out problems (bench/RESULTS.md)."""
INSTRUCT_TASKS = tuple(INSTRUCT_MIX)
ALL_TASKS = (*TASKS, "instruct", "corpus", "docs-qa")  # docs-qa: data/synthetic_docs.py


def generate(task: str, rows: int, seed: int) -> list[dict]:
    """`rows` prompt/completion rows of `task`, a function of (task, rows, seed); no prompt repeats within a call.

    `instruct` interleaves the tasks of INSTRUCT_MIX in their shares. Rows made together (arithmetic-mix's two
    forms of one problem) are kept or dropped together, and stay side by side (the last may be cut off).
    """
    if task == "instruct":
        return instruct_mix(rows, seed)
    if task not in TASKS:
        raise UserError(f"unknown synthetic task '{task}'; use one of {', '.join(ALL_TASKS)}")
    rng = random.Random(f"llmcycle/{task}/{seed}")
    result, seen = [], set()
    for _ in range(rows * 50):
        made = TASKS[task](rng)
        made = made if isinstance(made, list) else [made]
        prompts = {row["prompt"] for row in made}
        if len(prompts) == len(made) and seen.isdisjoint(prompts):
            seen |= prompts
            result += made
            if len(result) >= rows:
                return result[:rows]
    raise UserError(f"cannot make {rows} distinct '{task}' rows; ask for fewer")


def mix_counts(rows: int, shares: dict[str, int]) -> dict[str, int]:
    """Rows of each task: proportional to its share, the remainder to the largest fractions (ties: mix order)."""
    total = sum(shares.values())
    exact = {task: rows * share / total for task, share in shares.items()}
    counts = {task: int(value) for task, value in exact.items()}
    by_fraction = sorted(shares, key=lambda task: -(exact[task] - counts[task]))
    for task in by_fraction[: rows - sum(counts.values())]:
        counts[task] += 1
    return counts


def instruct_mix(rows: int, seed: int) -> list[dict]:
    """Each task's own rows (generate(task, count, seed)), interleaved evenly: the j-th of a task's n rows sits at
    about (j + 1/2) / n of the way through, so every stretch of the file holds every task in its share."""
    placed = []
    for order, (task, count) in enumerate(mix_counts(rows, INSTRUCT_MIX).items()):
        if count:
            placed += [((j + 0.5) / count, order, row) for j, row in enumerate(generate(task, count, seed))]
    return [row for _, _, row in sorted(placed, key=lambda item: item[:2])]


def corpus(rows: int, seed: int, extra: int = 0) -> list[str]:
    """`rows` documents of running text for pre-training (dialogues, narrative summaries, reviews, notes, requests),
    then `extra` more from a generator of their own, so the first `rows` are the same whatever `extra` is."""
    return everyday_documents(rows, seed) + copying_documents(extra, seed)


def everyday_documents(rows: int, seed: int) -> list[str]:
    rng = random.Random(f"llmcycle/corpus/{seed}")
    documents = []
    for _ in range(rows):
        kind = rng.choices(["dialogue", "story", "review", "note", "request"], weights=[40, 15, 20, 15, 10])[0]
        if kind == "dialogue":
            documents.append(make_scene(rng).text)
        elif kind == "story":  # summaries of unrelated scenes, so the corpus has narration but not the task
            documents.append(" ".join(" ".join(make_scene(rng).summary) for _ in range(rng.choice([1, 2, 3]))))
        elif kind == "review":
            documents.append(review(rng)[0])
        elif kind == "note":
            documents.append(rng.choice(NOTES).format(**request_scene(rng, rng.sample(NAMES, 2), ("accept",)).facts))
        else:
            rude, polite = rude_request(rng)
            documents.append(rude if rng.random() < 0.5 else polite)
    return documents


@dataclass
class SyntheticConfig:
    """A synthetic data file: what `llmcycle synth` writes."""

    task: str = "dialogsum"
    """dialogsum, extract, classify, rewrite, topic, narrate, reading (a question on a passage, or on passages laid out as rag ask does), arithmetic-mix (word problems with steps when asked, directly when not), copy (repeat a sequence), instruct (the last eight mixed, dialogsum held out), corpus (pre-training text), docs-qa (documentation and questions, for RAG), arithmetic (word problems with rationales, for chain-of-thought), dialogsum-prefs (preference pairs) or multiple-choice (a benchmark suite for eval --suite)."""
    rows: int = 500
    """Rows (documents, for corpus) to write."""
    extra_documents: int = 0
    """For corpus: documents written after the `rows` ones, two thirds repeating a random span later on (meant to make copying from the context pay off in pre-training), a third reading passages; 0 leaves the corpus as it was."""
    seed: int = 1
    """Seed; use different seeds for train and test files (e.g. 1 and 2)."""
    out: str = ""
    """File to write: JSONL; for corpus also .txt (a document a line, line breaks inside it become spaces)."""

    def validate(self) -> None:
        if self.task not in ALL_TASKS:
            raise UserError(f"unknown --task '{self.task}'; use one of {', '.join(ALL_TASKS)}")
        if self.rows < 1:
            raise UserError(f"--rows must be at least 1 (got {self.rows})")
        if self.extra_documents < 0 or (self.extra_documents and self.task != "corpus"):
            raise UserError(f"--extra-documents {self.extra_documents}: give a count of at least 0, and only with --task corpus")
        if not self.out:
            raise UserError("--out is required")
        suffix = Path(self.out).suffix.lower()
        if suffix not in (".jsonl", ".txt") or (suffix == ".txt" and self.task != "corpus"):
            raise UserError(f"--out {self.out}: write .jsonl (or .txt for --task corpus)")


def write_synthetic(cfg: SyntheticConfig) -> Path:
    """Write the rows of `cfg` atomically; returns the path written."""
    cfg.validate()
    out = Path(cfg.out)
    check_writable(out)
    if cfg.task == "docs-qa":
        return write_docs_qa(out, cfg.rows, cfg.seed)
    if cfg.task != "corpus":
        write_jsonl(out, generate(cfg.task, cfg.rows, cfg.seed))
    elif out.suffix.lower() == ".txt":
        with atomic_open(out) as handle:
            handle.writelines(" ".join(doc.split()) + "\n" for doc in corpus(cfg.rows, cfg.seed, cfg.extra_documents))
    else:
        write_jsonl(out, ({"text": doc} for doc in corpus(cfg.rows, cfg.seed, cfg.extra_documents)))
    return out
