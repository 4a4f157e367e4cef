"""The HELM-style view of one model on a suite (`eval --suite S --holistic`): several aspects, each with its interval.

- accuracy: acc on the suite, as scored;
- calibration: expected calibration error (10 equal-width bins) of the softmax over each item's choice
  log-likelihoods: how far the model's confidence in its pick is from how often such picks are right;
- robustness: acc when every question is perturbed (typos: two neighbouring letters swapped; casing; extra
  whitespace), seeded, with the same shots, and its paired change against the clean questions;
- toxicity: of what the model writes after each question (greedy, the generation settings), alt-profanity-check;
- efficiency: generation tokens/s and seconds per prompt, measured per batch (intervals over batches).

HELM (Liang et al., 2022) reports these per scenario; we keep its idea, one small table per model, not its
scenarios, which need data this offline tool does not ship.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

import numpy as np

from ..console import print_table
from ..generate.engine import GenerationSettings, generate
from ..models import LoadedModel
from .metrics import toxicity_scores
from .scoring import score_model
from .stats import Statistic, bootstrap_summary, mean_of_first, paired_change
from .suites import Item, Suite

ECE_BINS = 10
PERTURB_SHARE = 0.3
"""Share of words a perturbation touches."""


def choice_probabilities(loglikelihoods: list[np.ndarray]) -> list[np.ndarray]:
    return [np.exp(lls - lls.max()) / np.exp(lls - lls.max()).sum() for lls in loglikelihoods]


def _ece(samples: np.ndarray) -> np.ndarray:
    """(B, n, 2) of [confidence, correct] -> (B,) expected calibration error."""
    confidence, correct = samples[..., 0], samples[..., 1]
    bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    total = np.zeros(len(samples))
    for b in range(ECE_BINS):
        inside = bins == b
        count = inside.sum(axis=1)
        gap = np.abs((correct * inside).sum(axis=1) - (confidence * inside).sum(axis=1))
        total += np.where(count > 0, gap, 0.0)
    return total / samples.shape[1]


def calibration(loglikelihoods: list[np.ndarray], answers: list[int]) -> Statistic:
    probabilities = choice_probabilities(loglikelihoods)
    values = np.array([[p.max(), float(int(p.argmax()) == answer)] for p, answer in zip(probabilities, answers)])
    return Statistic(values, _ece)


def perturb(text: str, rng: random.Random) -> str:
    """Typos, casing and whitespace on about PERTURB_SHARE of the words; the same seed gives the same text."""
    words = text.split(" ")
    for index, word in enumerate(words):
        if rng.random() >= PERTURB_SHARE or not word:
            continue
        kind = rng.choice(["typo", "case", "space"])
        if kind == "typo" and len(word) > 3:
            at = rng.randrange(1, len(word) - 2)
            word = word[:at] + word[at + 1] + word[at] + word[at + 2:]
        elif kind == "case":
            word = word.upper() if rng.random() < 0.5 else word.lower()
        else:
            word = word + " "
        words[index] = word
    return " ".join(words)


def perturbed_suite(suite: Suite, seed: int) -> Suite:
    items = [replace(item, question=perturb(item.question, random.Random(f"{seed}/{item.id}"))) for item in suite.items]
    return Suite(items, suite.shots, suite.source)


def efficiency(loaded: LoadedModel, prompts: list[str], settings: GenerationSettings) -> tuple[list[str], dict]:
    """Generate batch by batch, timing each: outputs, and tokens/s and seconds per prompt with intervals over batches."""
    outputs, per_batch = [], []
    generate(loaded, prompts[:1], replace(settings, max_new_tokens=2), description="holistic: warm-up")  # first call pays set-up
    for start in range(0, len(prompts), settings.batch_size):
        chunk = prompts[start : start + settings.batch_size]
        started = time.perf_counter()
        texts = generate(loaded, chunk, settings, description="holistic: generating")
        seconds = time.perf_counter() - started
        tokens = sum(len(ids) for ids in loaded.tokenizer(texts, add_special_tokens=False)["input_ids"])
        outputs += texts
        per_batch.append([tokens, seconds, len(chunk)])
    values = np.array(per_batch, dtype=np.float64)  # (batches, 3): new tokens, seconds, prompts
    ratio = lambda i, j: lambda s: s[..., i].sum(-1) / np.maximum(s[..., j].sum(-1), 1e-12)  # noqa: E731
    return outputs, {"tokens_per_s": bootstrap_summary(Statistic(values, ratio(0, 1))),
                     "latency_s_per_prompt": bootstrap_summary(Statistic(values, ratio(1, 2))), "batches": len(per_batch)}


def holistic_view(loaded: LoadedModel, suite: Suite, shots: list[list[Item]], scores, request, settings: GenerationSettings | None) -> dict:
    """`{"accuracy", "calibration_ece", "robustness", "toxicity", "efficiency"}` for one model; prints its table."""
    settings = settings or GenerationSettings()
    clean = Statistic(scores.correct()["acc"][:, None], mean_of_first)
    noisy = score_model(loaded, perturbed_suite(suite, request.seed), shots, request.scoring, request.batch_size, "holistic: perturbed")
    perturbed = Statistic(noisy.correct()["acc"][:, None], mean_of_first)
    outputs, speed = efficiency(loaded, [item.question for item in suite.items], settings)
    toxicity = Statistic(toxicity_scores(outputs)[:, None], mean_of_first)
    view = {
        "accuracy": _summary(clean, request),
        "calibration_ece": _summary(calibration(scores.loglikelihoods, [i.answer for i in suite.items]), request),
        "robustness": {**_summary(perturbed, request), "change": paired_change(clean, perturbed, request.resamples, request.seed)},
        "toxicity": _summary(toxicity, request),
        "efficiency": speed,
    }
    _print(loaded.name, view)
    return view


def _summary(statistic: Statistic, request) -> dict:
    summary = bootstrap_summary(statistic, request.resamples, request.seed)
    summary.pop("std", None)
    return summary


def _print(name: str, view: dict) -> None:
    def cell(summary: dict) -> str:
        return f"{summary['mean']:.4f} [{summary['ci95'][0]:.4f}, {summary['ci95'][1]:.4f}]"

    rows = [
        ["accuracy (acc)", cell(view["accuracy"])],
        ["calibration (expected calibration error, lower is better)", cell(view["calibration_ece"])],
        ["robustness (acc on perturbed questions)", cell(view["robustness"]) + f"\nchange {view['robustness']['change']['absolute']:+.4f}"],
        ["toxicity of generations (mean probability)", cell(view["toxicity"])],
        ["efficiency: generated tokens/s", cell(view["efficiency"]["tokens_per_s"])],
        ["efficiency: seconds per prompt", cell(view["efficiency"]["latency_s_per_prompt"])],
    ]
    print_table(f"holistic view: {name} (95% bootstrap intervals)", ["aspect", "value"], rows)
