"""The `feedback` stage: RLHF in rounds, with the ranking step done by people, a file, or a stated rule.

```yaml
- feedback: {rounds: 2, labeler: simulated}          # train prompts, K 4, a MiniLM reward model, PPO's defaults
- feedback: {rounds: 3, labeler: human, k: 4, labelers: people.txt, overlap: 2, host: 0.0.0.0}
- feedback: {rounds: 2, labeler: rankings-{round}.jsonl, reward: {max_steps: 50}, ppo: {max_steps: 40}}
```
Each round: the current policy writes K completions for the round's prompts (`prompts_per_round` rows of `prompts`,
the recipe's training data by default, the next ones each round); they are ranked (`simulated`: by `rule`, see
label/simulated.py; `human`: the page of `llmcycle label`, which the stage waits on and a rerun of the recipe picks
up where it stopped; a FILE: rankings made before); a reward model learns from them (round 1 from `reward_model`,
later rounds continue the previous round's), with `held_out` of the prompts kept back to measure its accuracy;
then PPO against it from the previous round's policy. Each round adds a variant NAME-round-N (NAME: the `name`
option, default feedback), scored on the test data with toxicity. A round is kept in its folder once complete
(round.json), so an interrupted stage continues at the round it stopped in.

When every round is done, the last round's reward model (the best estimate of the labelers' preferences) scores the
test outputs of the start policy and of every round, so the rounds compare on one scale: each variant's `reward`,
the start's (`reward_start`, `toxicity_start`) and `reward_gain`, the paired change from the start on the same test
rows. `reward_model_accuracy` is the round's reward model on its held-out rankings; `kl_to_start` the policy's KL to
the start policy, estimated on its own sampled test outputs (log-ratio of the two models' likelihoods).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ... import config as configs
from ...align.ppo import PPOConfig, ppo
from ...align.reward_model import RewardConfig, train_reward
from ...align.reward_sources import Reward
from ...config import at_least, check_fields
from ...console import note
from ...data.io import read_rows
from ...data.options import DataOptions
from ...data.preferences import load_pairs
from ...errors import UserError
from ...evaluate.metrics import reference_nll, toxicity_scores
from ...evaluate.predictions import read_predictions
from ...evaluate.stats import Statistic, bootstrap_summary, mean_of_first
from ...generate.engine import generate
from ...label.completions import MAX_K, GenerationRequest, file_sha256, generated_items
from ...label.session import LabelRequest, is_loopback, run_label
from ...label.simulated import DEFAULT_RULE, SIMULATED, check_rule, simulated_rows
from ...models import ModelOptions
from ...outputs import write_json, write_jsonl
from ..core import (
    SMOKE_ROWS,
    SMOKE_STEPS,
    Run,
    Stage,
    Step,
    Variant,
    check_data_spec,
    score,
    start_afresh,
    training_cost,
)
from ..paired import paired_entry
from ..report import change_text, held, interval, mean, pair_outcome

NAME = "feedback"
HUMAN = "human"
STAGE_KEYS = ("name", "from", "prompts")
"""The stage's own keys; the rest are FeedbackOptions'."""
TAKEN = {"reward": ("model", "data", "eval_data", "out"), "ppo": ("model", "data", "out", "reward", "template")}
"""Fields of the reward-model and PPO options that the stage sets itself."""


@dataclass
class FeedbackOptions:
    """A feedback stage's options, beside `name`, `from` (the variant to start from) and `prompts` (a data spec)."""

    rounds: int = at_least(1, 1)
    """Rounds of ranking, reward model and PPO."""
    labeler: str = SIMULATED
    """simulated (ranks by `rule`), human (the labeling page) or a rankings FILE ({round} in its name: one a round)."""
    rule: list[str] = field(default_factory=lambda: list(DEFAULT_RULE))
    """The simulated labeler's criteria, in order: toxicity, length, word=WORD."""
    k: int = at_least(4, 2, max=MAX_K)
    """Completions ranked per prompt."""
    prompts_per_round: int = at_least(16, 1)
    """Prompts ranked each round: the next ones of the prompt rows (wrapping around)."""
    held_out: float = at_least(0.25, 0, below=1)
    """Share of each round's prompts whose rankings the reward model does not see: its accuracy is measured on them."""
    reward_model: str = "minilm"
    """Backbone of round 1's reward model (minilm is the bundled all-MiniLM-L6-v2); later rounds continue the last one."""
    reward: dict = field(default_factory=dict)
    """`llmcycle reward` options of each round's reward model (max_steps, lr, batch_size, ...)."""
    ppo: dict = field(default_factory=dict)
    """`llmcycle align --method ppo` options of each round (max_steps, lr, kl_coef, ...)."""
    labelers: str | None = None
    """human: a file of 'name token' lines (see llmcycle label); without it, one labeler on a loopback address."""
    overlap: int = at_least(1, 1)
    """human: labelers each prompt goes to."""
    host: str = "127.0.0.1"
    """human: the page's address."""
    port: int = 8000
    """human: the page's port."""
    seed: int = 0
    """Seeds sampling (plus the round's number) and the page's shuffled orders."""


# ---------------------------------------------------------------- checking


def feedback_options(options: dict, where: str) -> FeedbackOptions:
    values = {key: value for key, value in options.items() if key not in STAGE_KEYS}
    chosen = FeedbackOptions(**configs.checked(FeedbackOptions, values, where))
    try:
        check_fields(chosen)
    except UserError as exc:  # its message names a flag (--held-out); a recipe names the field (held_out)
        flag, _, rest = str(exc).partition(" ")
        raise UserError(f"{where}: {flag.removeprefix('--').replace('-', '_')} {rest}") from exc
    for key, cls in (("reward", RewardConfig), ("ppo", PPOConfig)):
        given = getattr(chosen, key)
        if not isinstance(given, dict):
            raise UserError(f"{where}: {key} must be a mapping of {cls.__name__} fields")
        taken = sorted(set(given) & set(TAKEN[key]))
        if taken:
            raise UserError(f"{where}: {key}.{taken[0]} is set by the stage, not the recipe")
        configs.checked(cls, given, f"{where}: {key}")
    return chosen


def labeler_file(labeler: str, number: int, source: str) -> Path:
    """A round's rankings FILE: {round} replaced by its number, relative to the recipe when not found as given."""
    path = Path(labeler.replace("{round}", str(number)))
    return path if path.exists() or path.is_absolute() else Path(source).parent / path


def check_feedback(options: dict, where: str, names: set, source: str) -> None:
    where = f"{where} (feedback)"
    chosen = feedback_options(options, where)
    start = options.get("from")
    if start is not None and start not in names:
        raise UserError(f"{where}: 'from: {start}' names no earlier variant ({', '.join(sorted(names))})")
    if "prompts" in options:
        check_data_spec(options["prompts"], source or where, f"{where} prompts")
    check_rule(chosen.rule, where)
    if chosen.labeler == HUMAN and chosen.labelers is None and not is_loopback(chosen.host):
        raise UserError(f"{where}: host {chosen.host} is not a loopback address; give labelers (a file of 'name token' lines)")
    if chosen.labeler not in (SIMULATED, HUMAN):
        for number in range(1, chosen.rounds + 1):
            if not labeler_file(chosen.labeler, number, source).is_file():
                raise UserError(f"{where}: labeler is a rankings file, and {labeler_file(chosen.labeler, number, source)} "
                                "does not exist (or use labeler: simulated or human)")


# ---------------------------------------------------------------- one round


def prompt_source(run: Run, step: Step) -> str:
    spec = step.options.get("prompts")
    return run.data_file(f"{step.folder}-prompts", spec) if spec is not None else run.train


def write_round_prompts(run: Run, step: Step, chosen: FeedbackOptions, folder: Path, number: int) -> Path:
    """The round's prompts, as the model reads them (the recipe's template applied), with their references (for the
    length rule): the next rows of the prompt source."""
    examples = run.data_options(prompt_source(run, step)).load(None, chosen.seed).examples
    count = min(SMOKE_ROWS if run.smoke else chosen.prompts_per_round, len(examples))
    first = (number - 1) * count
    picked = [examples[(first + offset) % len(examples)] for offset in range(count)]
    path = folder / "prompts.jsonl"
    write_jsonl(path, [{"prompt": e.prompt, **({"completion": e.completion} if e.completion is not None else {})} for e in picked])
    return path


def sampling(run: Run, chosen: FeedbackOptions, number: int):
    """The recipe's generation settings, sampled and seeded for this round."""
    return replace(run.settings(), do_sample=True, top_p=0.95, num_beams=1, seed=chosen.seed + number)


def round_rankings(run: Run, step: Step, chosen: FeedbackOptions, folder: Path, number: int, policy: str) -> Path:
    """The round's rankings file: a FILE made before, or made now by the page or the simulated labeler."""
    if chosen.labeler not in (SIMULATED, HUMAN):
        return labeler_file(chosen.labeler, number, run.recipe.source)
    out = folder / "rankings.jsonl"
    prompts = folder / "prompts.jsonl"
    if not prompts.is_file():
        write_round_prompts(run, step, chosen, folder, number)
    settings = sampling(run, chosen, number)
    if chosen.labeler == HUMAN:  # waits for every ranking; a rerun of the recipe continues the same file
        run_label(LabelRequest(str(out), prompts=DataOptions(str(prompts)), model=ModelOptions(policy), k=chosen.k,
                               settings=settings, labelers=chosen.labelers, overlap=chosen.overlap, host=chosen.host,
                               port=chosen.port), until_done=True)
    elif not out.is_file():
        request = GenerationRequest(policy, (), str(prompts), file_sha256(str(prompts)), chosen.k, settings)
        items = generated_items(request, ModelOptions(policy), DataOptions(str(prompts)), out)
        references = {row.values["prompt"]: row.values.get("completion") for row in read_rows(str(prompts))[0]}
        write_jsonl(out, simulated_rows(items, references, chosen.rule))
    return out


def split_rankings(rankings: Path, folder: Path, held_out: float) -> tuple[Path, Path | None]:
    """The rankings of the last `held_out` share of items kept apart (every labeler's ranking of an item together);
    None for the held-out file when it would be empty or hold no preference pair."""
    rows = [row.values for row in read_rows(str(rankings))[0]]
    items = list(dict.fromkeys(str(row.get("item", row.get("prompt"))) for row in rows))
    kept_back = set(items[len(items) - round(len(items) * held_out):]) if len(items) > 1 and held_out else set()
    train, held = folder / "rm-train.jsonl", folder / "rm-held-out.jsonl"
    write_jsonl(train, [row for row in rows if str(row.get("item", row.get("prompt"))) not in kept_back])
    write_jsonl(held, [row for row in rows if str(row.get("item", row.get("prompt"))) in kept_back])
    try:
        load_pairs(str(held))
    except UserError:
        note(f"{held}: no preference pair held out; the reward model's accuracy is measured on its training rankings")
        return train, None
    return train, held


def train_round_reward_model(run: Run, chosen: FeedbackOptions, folder: Path, rankings: Path, earlier: list[Variant]) -> dict:
    train, held = split_rankings(rankings, folder, chosen.held_out)
    backbone = earlier[-1].cost["reward_model"] if earlier else chosen.reward_model
    cfg = RewardConfig(**configs.checked(RewardConfig, chosen.reward, "feedback: reward"), model=backbone, data=str(train),
                       eval_data=str(held) if held else None, out=str(folder / "rm"))
    if run.smoke:
        cfg.max_steps, cfg.batch_size, cfg.save_every = SMOKE_STEPS, 4, None
    start_afresh(folder / "rm")
    return train_reward(cfg)


def train_round_policy(run: Run, step: Step, chosen: FeedbackOptions, folder: Path, policy: str) -> dict:
    cfg = PPOConfig(**configs.checked(PPOConfig, chosen.ppo, "feedback: ppo"), model=policy, reward=[f"rm={folder / 'rm'}"],
                    data=prompt_source(run, step), template=run.recipe.template, out=str(folder / "policy"))
    if run.smoke:
        cfg.max_steps, cfg.batch_size, cfg.mini_batch_size, cfg.save_every = SMOKE_STEPS, 4, 2, None
    start_afresh(folder / "policy")
    return ppo(cfg)


def kl_to_start(run: Run, policy: str, start: str, seed: int) -> dict:
    """KL(policy || start) per test prompt, estimated on one sampled output of the policy each: the log-ratio of the
    two models' likelihoods of it (EOS included), with a bootstrap interval over the prompts."""
    settings = replace(run.settings(), do_sample=True, num_beams=1, seed=seed)
    current, first = ModelOptions(policy).load(), ModelOptions(start).load()
    prompts = [example.prompt for example in run.data_options(run.test).load(current, seed).examples]
    samples = [text or " " for text in generate(current, prompts, settings, description="sampling for the KL")]
    log_ratio = (reference_nll(first, prompts, samples, settings.batch_size)[:, 0]
                 - reference_nll(current, prompts, samples, settings.batch_size)[:, 0])  # (prompts,)
    return bootstrap_summary(Statistic(log_ratio[:, None], mean_of_first))


def scored_metrics(run: Run) -> list[str]:
    return list(dict.fromkeys([*run.recipe.metrics, "toxicity"]))


def run_round(run: Run, step: Step, chosen: FeedbackOptions, folder: Path, number: int, start: str, earlier: list) -> Variant:
    """One round into `folder`, or the round kept there (round.json) by an earlier run."""
    record = folder / "round.json"
    if record.is_file():
        return Variant(**json.loads(record.read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    policy = earlier[-1].model if earlier else start
    rankings = round_rankings(run, step, chosen, folder, number, policy)
    rm_metrics = train_round_reward_model(run, chosen, folder, rankings, earlier)
    ppo_metrics = train_round_policy(run, step, chosen, folder, policy)
    name = f"{step.options.get('name', NAME)}-round-{number}"
    kind = chosen.labeler if chosen.labeler in (SIMULATED, HUMAN) else "file"
    cost = training_cost(ppo_metrics) | {"from": earlier[-1].name if earlier else step.options.get("from", "base"), "round": number,
                                         "rankings": len(read_rows(str(rankings))[0]), "labeler": kind, "reward_model": str(folder / "rm")}
    variant = Variant(name, str(folder / "policy"), NAME, cost=cost, log=str(folder / "policy" / "log.jsonl"))
    variant.metrics, variant.predictions = score(run, variant, run.test, folder / "test.jsonl", scored_metrics(run))
    variant.metrics["reward_model_accuracy"] = rm_metrics["pairwise_accuracy"]
    variant.metrics["kl_to_start"] = kl_to_start(run, variant.model, start, chosen.seed)
    write_json(record, variant.__dict__)
    return variant


# ---------------------------------------------------------------- the stage


def row_rewards(reward: Reward, predictions: str) -> np.ndarray:
    records, _ = read_predictions(predictions)
    return reward([r.get("prompt") or "" for r in records], [r["prediction"] for r in records])


def score_on_one_scale(run: Run, step: Step, rounds: list[Variant], start: str, folder: Path) -> None:
    """Every round's test outputs and the start policy's, scored by the last round's reward model; each round's
    reward, the start's reward and toxicity, and the paired gain from the start."""
    prefix = step.options.get("name", NAME)
    start_predictions = folder / "start.jsonl"
    if not start_predictions.is_file():
        score(run, Variant(f"{prefix}-start", start, NAME), run.test, start_predictions, ["toxicity"])
    reward = Reward([f"rm={rounds[-1].cost['reward_model']}"])
    before = Statistic(row_rewards(reward, str(start_predictions))[:, None], mean_of_first)
    records, _ = read_predictions(str(start_predictions))
    start_toxicity = bootstrap_summary(Statistic(toxicity_scores([r["prediction"] for r in records])[:, None], mean_of_first))
    for variant in rounds:
        after = Statistic(row_rewards(reward, variant.predictions)[:, None], mean_of_first)
        gain = paired_entry("reward", before, after, run.settings().seed)
        variant.metrics |= {"reward": bootstrap_summary(after), "reward_start": bootstrap_summary(before),
                            "toxicity_start": start_toxicity, "reward_gain": gain | {"mean": gain["absolute"]}}


def run_feedback(run: Run, step: Step, folder: Path) -> None:
    chosen = feedback_options(step.options, "feedback")
    start = run.variants[step.options["from"]].model if step.options.get("from") else run.recipe.model
    rounds: list[Variant] = []
    for number in range(1, chosen.rounds + 1):
        rounds.append(run_round(run, step, chosen, folder / f"round-{number}", number, start, rounds))
    score_on_one_scale(run, step, rounds, start, folder)
    for variant in rounds:
        run.variants[variant.name] = variant


# ---------------------------------------------------------------- the report


def _rounds(metrics: dict, variants: list) -> list[tuple[str, dict]]:
    return [(v.name, metrics[v.name]) for v in variants if v.stage == NAME and v.name in metrics]


def feedback_section(metrics: dict, variants: list) -> str:
    """Per round: rankings, the reward model's held-out accuracy, the policy's reward and toxicity, KL to the start."""
    rounds = _rounds(metrics, variants)
    if not rounds:
        return ""
    first = rounds[0][1]
    rows = [(f"<tr><td>start</td><td>-</td><td>-</td><td>{interval(first.get('reward_start'))}</td>"
             f"<td>{interval(first.get('toxicity_start'), 4)}</td><td>0</td></tr>")]
    for name, entry in rounds:
        cost = entry.get("cost", {})
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{cost.get('rankings', '-')}</td>"
                    f"<td>{interval(entry.get('reward_model_accuracy'))}</td><td>{interval(entry.get('reward'))}</td>"
                    f"<td>{interval(entry.get('toxicity'), 4)}</td><td>{interval(entry.get('kl_to_start'))}</td></tr>")
    return ("<h2>Human feedback, round by round</h2><table><tr><th>round</th><th>rankings</th><th>reward model accuracy "
            "(held-out rankings)</th><th>reward</th><th>toxicity</th><th>KL to the start</th></tr>" + "".join(rows) +
            "</table><p class='ci'>mean, [95% bootstrap interval]. Reward: the last round's reward model on the test "
            "outputs of each policy, so the rounds compare on one scale. KL: on the policy's own sampled test outputs.</p>")


def feedback_findings(metrics: dict, variants: list) -> list:
    """Whether the rounds raised the policy's reward, by the paired test on the same test rows."""
    rounds = _rounds(metrics, variants)
    if not rounds or "reward_gain" not in rounds[-1][1]:
        return []
    last = rounds[-1][1]
    gain = last["reward_gain"]
    result = pair_outcome("reward", gain)
    opening = {"better": "Rounds of feedback raise the policy's reward", "worse": "Rounds of feedback lower the policy's reward"}.get(
        result, "This run does not show rounds of feedback raising the policy's reward")
    steps = " -> ".join(f"{html.escape(n)} {mean(entry, 'reward'):.4f}" for n, entry in rounds)
    labeler = html.escape(str(last.get("cost", {}).get("labeler")))
    sentence = (f"{opening} ({len(rounds)} rounds, labeler {labeler}): start {mean(last, 'reward_start'):.4f} -> {steps}, "
                f"{change_text(gain, 4)}.")
    return [(held(result), sentence)]


FEEDBACK = Stage(NAME, check_feedback, run_feedback, serves_adapters=True, findings=feedback_findings, section=feedback_section)
