"""In-context learning: zero-, one- and few-shot prompts, checked against the model's context window.

For each query row, K solved examples are drawn by seed from the shot pool (never the row itself) and laid out
before the query, the layout of the course's Lab 1:

    {shot prompt}
    {shot completion}


    {shot prompt}
    {shot completion}


    {query prompt}

With --cot, shots carry their rationale and the model's answer is extracted and scored; see the
chain-of-thought section below.
"""

from __future__ import annotations

import random
import time
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from ..console import note, print_table
from ..data import Example, load_template
from ..data.io import read_rows
from ..data.options import DataOptions
from ..data.template import render
from ..errors import UserError
from ..evaluate.compare import compare, print_comparison
from ..evaluate.forgetting import add_changes
from ..evaluate.metrics import parse_metrics, score
from ..evaluate.predictions import metric_input
from ..evaluate.stats import Statistic, bootstrap_summary, mean_of_first
from ..models import LoadedModel, ModelOptions
from ..outputs import check_writable, write_json, write_jsonl
from .engine import GenerationSettings, generate, token_lengths
from .predict import prediction_records

SHOT_SEPARATOR = "\n\n\n"
PROMPT_COMPLETION_SEPARATOR = "\n"


@dataclass(frozen=True)
class ShotPrompt:
    """A query with its in-context examples laid out before it."""

    text: str
    shots: int
    """How many examples it holds: the number asked for, or fewer if --truncate-shots dropped some."""


def render_shot(example: Example) -> str:
    return example.prompt.rstrip() + PROMPT_COMPLETION_SEPARATOR + (example.completion or "").strip()


def draw_shots(query: Example, pool: list[Example], shots: int, seed: int, same_source: bool) -> list[Example]:
    """K examples for one query, fixed by (seed, query index); the query itself is never among them."""
    if shots == 0:
        return []
    candidates = [
        example for example in pool
        if not (same_source and example.index == query.index) and example.prompt != query.prompt
    ]
    if len(candidates) < shots:
        raise UserError(f"{shots} shots asked for, but the shot data holds only {len(candidates)} usable examples for {query.where}")
    return random.Random(seed * 1_000_003 + query.index).sample(candidates, shots)


def build_prompts(
    loaded: LoadedModel,
    queries: list[Example],
    pool: list[Example],
    shots: int,
    *,
    seed: int,
    same_source: bool,
    max_new_tokens: int,
    truncate_shots: bool,
    render=render_shot,
    suffix: str = "",
) -> list[ShotPrompt]:
    """Prompts with `shots` examples each; one that does not fit the context window is an error, or loses shots.

    `render` lays out one shot (chain-of-thought shots carry their rationale); `suffix` follows each query.
    """
    window = loaded.context_window
    reserve = 0 if loaded.is_encoder_decoder else max_new_tokens
    result = []
    for query in queries:
        chosen = draw_shots(query, pool, shots, seed, same_source)
        while True:
            text = SHOT_SEPARATOR.join([*map(render, chosen), query.prompt + suffix])
            length = token_lengths(loaded, [text])[0]
            if window is None or length + reserve <= window:
                break
            if not truncate_shots or not chosen:
                raise UserError(
                    f"{query.where}: with {len(chosen)} shots the prompt is {length} tokens"
                    + (f" + {reserve} new tokens" if reserve else "")
                    + f", more than the model's context window of {window}; use fewer --shots or --truncate-shots"
                )
            chosen = chosen[:-1]
        result.append(ShotPrompt(text, len(chosen)))
    return result


def parse_shots(value: str) -> list[int]:
    """`--shots 0,1,5` -> [0, 1, 5]."""
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise UserError(f"--shots {value!r}: give a number or a comma-separated list such as 0,1,5") from exc
    if not counts or any(count < 0 for count in counts):
        raise UserError(f"--shots {value!r}: counts must be 0 or more")
    if len(set(counts)) != len(counts):
        raise UserError(f"--shots {value!r}: a count is given twice")
    return counts


def shots_path(out_path: str, shots: int | str, several: bool) -> str:
    """`preds.jsonl` for a single k; `preds.0-shot.jsonl`, `preds.5-shot.jsonl`, ... for several (`preds.cot.jsonl` for a mode)."""
    if not several:
        return out_path
    path = Path(out_path)
    label = f"{shots}-shot" if isinstance(shots, int) else shots
    return str(path.with_name(f"{path.stem}.{label}{path.suffix or '.jsonl'}"))


def shots_label(shots: int) -> str:
    return {0: "zero-shot", 1: "one-shot"}.get(shots, f"{shots}-shot")


def prompt_dataset(
    model: ModelOptions,
    data: DataOptions,
    shots: str,
    settings: GenerationSettings,
    out_path: str,
    *,
    shot_data: DataOptions | None = None,
    truncate_shots: bool = False,
    metrics: list[str] | None = None,
    metrics_out: str | None = None,
    timings: dict | None = None,
) -> dict[str, dict]:
    """In-context learning with each shot count; returns `{label: metrics}` and writes a predictions file per count.
    `timings`, if given, receives `{label: seconds}` spent generating each count's predictions."""
    counts = parse_shots(shots)
    settings.validate()
    metric_names = parse_metrics(metrics or ["rouge"])
    paths = [shots_path(out_path, k, len(counts) > 1) for k in counts]
    for path in [*paths, *([metrics_out] if metrics_out else [])]:
        check_writable(path)
    loaded = model.load()
    queries = data.load(loaded, settings.seed).examples
    pool_source = shot_data or data
    pool = queries if shot_data is None else shot_data.load(loaded, settings.seed, require_completion=True).examples
    if max(counts) > 0 and shot_data is None and any(e.completion is None for e in pool):
        raise UserError(f"{data.data}: rows used as shots need a completion; pass --shot-data with solved examples")
    # Build (and length-check) every prompt for every count before generating anything.
    prompt_sets = {
        k: build_prompts(loaded, queries, pool, k, seed=settings.seed, same_source=shot_data is None,
                         max_new_tokens=settings.max_new_tokens, truncate_shots=truncate_shots)
        for k in counts
    }
    results: dict[str, dict] = {}
    for k, path in zip(counts, paths):
        records = _generate_count(loaded, queries, prompt_sets[k], k, settings, path, pool_source.data, timings)
        if all(e.completion is not None for e in queries):
            results[shots_label(k)] = score(metric_input(records, path, loaded, settings.batch_size), metric_names, seed=settings.seed)
    _report(results, metrics_out)
    return results


def _report(results: dict[str, dict], metrics_out: str | None) -> None:
    if not results:
        note("the data has no completions, so no metrics were computed")
        return
    print_comparison("in-context learning", results)
    if metrics_out:
        write_json(metrics_out, compare(results))


def _generate_count(loaded, queries, shot_prompts: list[ShotPrompt], k: int, settings: GenerationSettings, path: str,
                    source: str, timings: dict | None) -> list[dict]:
    """Generate and write the predictions of one shot count; `timings[label]` gets the seconds spent generating."""
    truncated = sum(p.shots < k for p in shot_prompts)
    if truncated:
        note(f"{k}-shot: {truncated} of {len(shot_prompts)} prompts lost shots to fit the context window")
    texts = [p.text for p in shot_prompts]
    started = time.perf_counter()
    predictions = generate(loaded, texts, settings, description=f"{shots_label(k)} ({source})")
    if timings is not None:
        timings[shots_label(k)] = time.perf_counter() - started
    records = [{**record, "shots": p.shots} for record, p in zip(prediction_records(queries, texts, predictions), shot_prompts)]
    write_jsonl(path, records)
    note(f"wrote {len(records)} predictions to {path}")
    return records


# ---------------------------------------------------------------- chain-of-thought
#
# A CoT shot is its question, its worked rationale, then "The answer is X."; a direct shot the same without the
# rationale, so the two differ only in the reasoning. The model's answer is the first group of --answer-pattern
# in what it wrote; accuracy compares it with the row's `answer` (or the answer in its completion). With no
# shots, CoT asks "Let's think step by step." (Kojima et al., 2022). Self-consistency (Wang et al., 2023) samples
# K reasoning paths with seeds seed..seed+K-1 and takes the most common answer.

DEFAULT_ANSWER_PATTERN = r"(?i)the answer is:?\s*([^\n]+?)(?:\.(?!\d)|\n|$)"
ANSWER_LINE = "The answer is {answer}."
ZERO_SHOT_COT = "\nLet's think step by step."


@dataclass(frozen=True)
class Solved:
    """What chain-of-thought needs from a row beyond its prompt: its rationale and its answer."""

    rationale: str | None
    answer: str | None


def compile_answer_pattern(pattern: str | None) -> re.Pattern:
    try:
        compiled = re.compile(pattern or DEFAULT_ANSWER_PATTERN)
    except re.error as exc:
        raise UserError(f"--answer-pattern {pattern!r} is not a regular expression ({exc})") from exc
    if compiled.groups != 1:
        raise UserError(f"--answer-pattern {pattern!r} has {compiled.groups} groups; give exactly one, around the answer")
    return compiled


def normalize_answer(text: str) -> str:
    """Compare answers without case, surrounding space and punctuation, currency signs or thousands separators."""
    text = text.strip().strip(".!?;:").strip().lower().replace("$", "")
    return re.sub(r"(?<=\d),(?=\d{3})", "", text).strip()


def extract_answer(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    return normalize_answer(match.group(1)) if match and match.group(1) else None


def solved_rows(data: DataOptions, examples: list[Example], pattern: re.Pattern) -> dict[str, Solved]:
    """Rationale and answer of each example, by location: the row's `rationale` and `answer` fields, else the
    answer the completion states, else the completion itself."""
    values = {row.where: row.values for row in read_rows(data.data, data.split)[0]}
    template = load_template(data.template) if data.template else None
    result = {}
    for example in examples:
        row = values.get(example.where, {})
        if template is not None and template.rationale:  # the template says which fields make the rationale
            row = {**row, "rationale": render(template.rationale, row)}
        rationale = row.get("rationale") if isinstance(row.get("rationale"), str) and row["rationale"].strip() else None
        answer = row.get("answer")
        if answer is None and example.completion is not None:
            answer = extract_answer(pattern, example.completion) or example.completion
        result[example.where] = Solved(rationale, None if answer is None else normalize_answer(str(answer)))
    return result


def cot_shot(example: Example, solved: Solved, with_rationale: bool) -> str:
    if solved.answer is None or (with_rationale and solved.rationale is None):
        missing = "answer" if solved.answer is None else "rationale"
        raise UserError(f"{example.where}: field '{missing}' is missing; chain-of-thought shots need a rationale and an answer")
    reasoning = f"{solved.rationale.strip()} " if with_rationale and solved.rationale else ""
    return f"{example.prompt.rstrip()}{PROMPT_COMPLETION_SEPARATOR}{reasoning}{ANSWER_LINE.format(answer=solved.answer)}"


def majority(answers: list[str | None]) -> str | None:
    """The most common answer; ties go to the one seen first, paths without an answer do not vote."""
    counts = Counter(a for a in answers if a is not None)
    return max(counts, key=lambda a: (counts[a], -answers.index(a))) if counts else None


@dataclass
class CotRequest:
    """What `llmcycle prompt --cot` was asked to do."""

    shots: int = 0
    answer_pattern: str | None = None
    self_consistency: int = 0
    truncate_shots: bool = False
    metrics_out: str | None = None


def cot_dataset(model: ModelOptions, data: DataOptions, settings: GenerationSettings, out_path: str, request: CotRequest,
                shot_data: DataOptions | None = None) -> dict[str, dict]:
    """Direct answers, chain-of-thought and (with self_consistency K) K sampled paths, on the same queries and shots.

    Writes NAME.direct.jsonl, NAME.cot.jsonl (and NAME.self-consistency.jsonl); returns accuracy per mode with its
    interval, CoT and self-consistency carrying a paired change against direct answers.
    """
    pattern = compile_answer_pattern(request.answer_pattern)
    settings.validate()
    if request.self_consistency < 0:
        raise UserError("--self-consistency must be 0 (off) or a number of sampled paths")
    modes = ["direct", "cot", *(["self-consistency"] if request.self_consistency else [])]
    paths = {mode: shots_path(out_path, mode, True) for mode in modes}  # type: ignore[arg-type]
    for path in [*paths.values(), *([request.metrics_out] if request.metrics_out else [])]:
        check_writable(path)
    loaded = model.load()
    queries = data.load(loaded, settings.seed).examples
    pool = queries if shot_data is None else shot_data.load(loaded, settings.seed).examples
    solved = {**solved_rows(data, queries, pattern), **(solved_rows(shot_data, pool, pattern) if shot_data else {})}
    prompts = {mode: _cot_prompts(loaded, queries, pool, solved, request, settings, mode != "direct", shot_data is None) for mode in modes[:2]}
    records = {mode: _cot_records(loaded, queries, prompts[mode], solved, settings, pattern, 1, mode) for mode in modes[:2]}
    if request.self_consistency:
        records["self-consistency"] = _cot_records(loaded, queries, prompts["cot"], solved, settings, pattern,
                                                   request.self_consistency, "self-consistency")
    for mode in modes:
        write_jsonl(paths[mode], records[mode])
        note(f"wrote {len(records[mode])} {mode} predictions to {paths[mode]}")
    return _cot_summary(records, queries, solved, settings.seed, request.metrics_out)


def _cot_prompts(loaded, queries, pool, solved, request: CotRequest, settings, with_rationale: bool, same_source: bool) -> list[str]:
    built = build_prompts(loaded, queries, pool, request.shots, seed=settings.seed, same_source=same_source,
                          max_new_tokens=settings.max_new_tokens, truncate_shots=request.truncate_shots,
                          render=lambda e: cot_shot(e, solved[e.where], with_rationale),
                          suffix=ZERO_SHOT_COT if with_rationale and request.shots == 0 else "")
    return [p.text for p in built]


def _cot_records(loaded, queries, prompts, solved, settings: GenerationSettings, pattern, paths: int, mode: str) -> list[dict]:
    """Generate `paths` completions per prompt (sampled when more than one, each row seeded by its place in one engine
    run of every path) and extract answers."""
    if paths == 1:
        outputs = [[text] for text in generate(loaded, prompts, settings, description=mode)]
    else:  # one engine run over every path of every prompt (each row is seeded by its index): full batches throughout
        texts = generate(loaded, [p for _ in range(paths) for p in prompts], replace(settings, do_sample=True),
                         description=f"{mode} ({paths} paths)")
        outputs = [texts[i::len(prompts)] for i in range(len(prompts))]
    records = []
    for query, prompt, texts in zip(queries, prompts, outputs):
        answers = [extract_answer(pattern, text) for text in texts]
        answer, reference = majority(answers), solved[query.where].answer
        record = {"prompt": prompt, "prediction": texts[0] if paths == 1 else texts, "answer": answer, "reference": reference,
                  "correct": None if reference is None else answer == reference}
        records.append({**record, **({"path_answers": answers} if paths > 1 else {})})
    return records


def _cot_summary(records: dict[str, list[dict]], queries, solved, seed: int, metrics_out: str | None) -> dict[str, dict]:
    import numpy as np

    if any(solved[q.where].answer is None for q in queries):
        note("some queries have neither an answer nor a completion, so no accuracy was computed")
        return {}
    correct = {mode: np.array([float(r["correct"]) for r in rows]) for mode, rows in records.items()}
    stats = {mode: {"accuracy": Statistic(values[:, None], mean_of_first)} for mode, values in correct.items()}
    runs = {mode: {"accuracy": bootstrap_summary(stat["accuracy"], seed=seed)} for mode, stat in stats.items()}
    add_changes(runs, stats, 1000, seed, {mode: {"accuracy": values} for mode, values in correct.items()})
    for mode, rows in records.items():
        runs[mode]["answered"] = round(float(np.mean([r["answer"] is not None for r in rows])), 6)
    _print_cot_table(runs, len(queries))
    if metrics_out:
        write_json(metrics_out, runs)
    return runs


def _print_cot_table(runs: dict[str, dict], queries: int) -> None:
    def change(summary: dict) -> str:
        c = summary.get("change")
        return "-" if not c else f"{c['absolute']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}], McNemar p={c['p_value']:.3g}"

    rows = [[mode, f"{run['accuracy']['mean']:.4f} [{run['accuracy']['ci95'][0]:.4f}, {run['accuracy']['ci95'][1]:.4f}]",
             change(run["accuracy"]), f"{run.get('forgot', '-')}/{run.get('learned', '-')}", f"{run['answered']:.2f}"]
            for mode, run in runs.items()]
    print_table(f"accuracy of the extracted answer on {queries} queries (95% bootstrap intervals; change vs direct, paired)",
                ["mode", "accuracy", "change vs direct", "lost/gained", "share answered"], rows)
