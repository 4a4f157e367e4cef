"""Metrics, each computed by the package that defines it, as per-example statistics ready for the bootstrap.

- rouge: rouge1, rouge2, rougeL, rougeLsum from `rouge_score` (F1, stemmed), averaged over examples, the way
  Hugging Face `evaluate` reports them. rougeLsum splits summaries into sentences at newlines.
- bleu: corpus BLEU from sacrebleu (0-100), recomputed from summed n-gram counts in each bootstrap resample.
- exact_match: prediction equals reference after trimming and collapsing whitespace.
- toxicity: the offensive-language probability of alt-profanity-check: `toxicity` (mean), `toxicity_max`,
  `toxicity_share` (share of outputs above 0.5).
- length: words per output (reference-free); distinct: distinct-1 and distinct-2, the share of an output's
  unigrams and bigrams that are unique within it (reference-free, Li et al. 2016, averaged over outputs).
- repetition: the share of outputs that say one sentence three or more times (reference-free; the loop a
  small or over-tuned model falls into). Ours: the libraries above measure n-gram diversity, not this.
- names_in_source: of the capitalised words an output uses as names, the share that occur in the row's prompt,
  pooled over all outputs (names found / names used; reference-free). A summary that names people who are not
  in its dialogue is unfaithful, whatever its ROUGE. Ours: no library measures this.
- perplexity: of each reference (followed by EOS) given its prompt, under the model; exp(total NLL / total
  reference tokens) over the corpus.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..models import LoadedModel
from .stats import Statistic, bootstrap_summary, mean_of_first

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
TOXIC_THRESHOLD = 0.5


@dataclass
class MetricInput:
    """What a metric may read: outputs, references and prompts (one per row), and the model when there is one."""

    predictions: list[str]
    references: list[str | None]
    prompts: list[str]
    wheres: list[str]
    model: LoadedModel | None = None
    batch_size: int = 8

    def require_references(self, metric: str) -> list[str]:
        for reference, where in zip(self.references, self.wheres):
            if reference is None:
                raise UserError(f"{where}: metric '{metric}' needs a reference, and this row has none")
        return self.references  # type: ignore[return-value]


def _rouge_tokenizer():
    """rouge_score's own tokenizer and Porter stemmer, each word stemmed once: summaries repeat their words, and
    stemming is most of ROUGE's time (the scores are rouge_score's to the digit; tests compare them)."""
    from nltk.stem import porter
    from rouge_score import tokenize, tokenizers

    class StemOnce(tokenizers.Tokenizer):
        def __init__(self):
            self.stem = functools.lru_cache(maxsize=1 << 16)(porter.PorterStemmer().stem)

        def tokenize(self, text):
            return tokenize.tokenize(text, self)

    return StemOnce()


def _rouge(data: MetricInput) -> dict[str, Statistic]:
    from rouge_score import rouge_scorer

    references = data.require_references("rouge")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), split_summaries=False, tokenizer=_rouge_tokenizer())
    scores = [scorer.score(reference, prediction) for reference, prediction in zip(references, data.predictions)]
    return {
        name: Statistic(np.array([[score[name].fmeasure] for score in scores]), mean_of_first) for name in ROUGE_TYPES
    }


def _bleu(data: MetricInput) -> dict[str, Statistic]:
    from sacrebleu.metrics import BLEU

    references = data.require_references("bleu")
    bleu = BLEU()
    # Per-segment sufficient statistics: [hyp_len, ref_len, correct_1..4, total_1..4].
    stats = np.array(bleu._extract_corpus_statistics(data.predictions, [references]), dtype=np.float64)

    def corpus_bleu(samples: np.ndarray) -> np.ndarray:  # (B, n, k) -> (B,)
        sums = samples.sum(axis=1)
        return np.array([bleu._compute_score_from_stats(row.astype(int).tolist()).score for row in sums])

    return {"bleu": Statistic(stats, corpus_bleu)}


def _exact_match(data: MetricInput) -> dict[str, Statistic]:
    references = data.require_references("exact_match")
    matches = [float(" ".join(p.split()) == " ".join(r.split())) for p, r in zip(data.predictions, references)]
    return {"exact_match": Statistic(np.array(matches)[:, None], mean_of_first)}


def toxicity_scores(texts: list[str]) -> np.ndarray:
    """Probability that each text is offensive, from alt-profanity-check's trained classifier."""
    from profanity_check import predict_prob

    return np.asarray(predict_prob(texts), dtype=np.float64) if texts else np.zeros(0)


def _toxicity(data: MetricInput) -> dict[str, Statistic]:
    scores = toxicity_scores(data.predictions)[:, None]
    return {
        "toxicity": Statistic(scores, mean_of_first),
        "toxicity_max": Statistic(scores, lambda samples: samples[..., 0].max(axis=-1)),
        "toxicity_share": Statistic((scores > TOXIC_THRESHOLD).astype(np.float64), mean_of_first),
    }


def _length(data: MetricInput) -> dict[str, Statistic]:
    return {"length": Statistic(np.array([[len(p.split())] for p in data.predictions], dtype=np.float64), mean_of_first)}


def _distinct_share(words: list[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _distinct(data: MetricInput) -> dict[str, Statistic]:
    words = [p.split() for p in data.predictions]
    return {f"distinct_{n}": Statistic(np.array([[_distinct_share(w, n)] for w in words]), mean_of_first) for n in (1, 2)}


REPEATS = 3
"""An output repeats itself when one of its sentences occurs this many times."""


def repeats_sentence(text: str, times: int = REPEATS) -> bool:
    """Whether a sentence (split at . ! ? and newlines, compared without case or surrounding space) occurs `times` times."""
    sentences = [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
    return bool(sentences) and Counter(sentences).most_common(1)[0][1] >= times


def _repetition(data: MetricInput) -> dict[str, Statistic]:
    return {"repetition": Statistic(np.array([[float(repeats_sentence(p))] for p in data.predictions]), mean_of_first)}


NAME_PATTERN = re.compile(r"\b[A-Z][a-z]+\b")
NOT_NAMES = frozenset(
    "Summarize Summary The They He She It A An On In At Yes No OK Hi Hello Oh Please Thank Thanks I We You Both "
    "Then After Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
)
"""Capitalised words that open sentences or name days, not people: left out of names_in_source."""


def names_used(text: str) -> list[str]:
    """The words of `text` that look like names: capitalised, lower case after, not a sentence-opening word."""
    return [word for word in NAME_PATTERN.findall(text) if word not in NOT_NAMES]


def _names_in_source(data: MetricInput) -> dict[str, Statistic]:
    counts = []  # (names found in the prompt, names used) per output
    for prediction, prompt in zip(data.predictions, data.prompts):
        names = names_used(prediction)
        counts.append([sum(name in prompt for name in names), len(names)])

    def pooled_share(samples: np.ndarray) -> np.ndarray:  # (B, n, 2) -> (B,); nan where no output names anyone
        found, used = samples[..., 0].sum(axis=-1), samples[..., 1].sum(axis=-1)
        return np.divide(found, used, out=np.full(found.shape, np.nan), where=used > 0)

    return {"names_in_source": Statistic(np.array(counts, dtype=np.float64).reshape(-1, 2), pooled_share)}


def _perplexity(data: MetricInput) -> dict[str, Statistic]:
    if data.model is None:
        raise UserError("metric 'perplexity' needs --model: it scores the references under a model")
    references = data.require_references("perplexity")
    stats = reference_nll(data.model, data.prompts, references, data.batch_size)  # (n, 2): nll sum, tokens

    def corpus_perplexity(samples: np.ndarray) -> np.ndarray:
        sums = samples.sum(axis=1)
        return np.exp(sums[:, 0] / np.maximum(sums[:, 1], 1))

    return {"perplexity": Statistic(stats, corpus_perplexity)}


@torch.inference_mode()
def reference_nll(loaded: LoadedModel, prompts: list[str], references: list[str], batch_size: int) -> np.ndarray:
    """(n, 2): summed negative log-likelihood of each reference + EOS given its prompt, and its token count."""
    tokenizer = loaded.tokenizer
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    target_ids = [ids + eos for ids in tokenizer(references, add_special_tokens=False)["input_ids"]]
    result = np.zeros((len(prompts), 2))
    for start in range(0, len(prompts), batch_size):
        rows = range(start, min(start + batch_size, len(prompts)))
        batch = _nll_batch(loaded, [prompt_ids[i] for i in rows], [target_ids[i] for i in rows])
        result[start : start + len(rows)] = batch
    return result


def _pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences])


def _nll_batch(loaded: LoadedModel, prompts: list[list[int]], targets: list[list[int]]) -> np.ndarray:
    device, pad = loaded.device, loaded.tokenizer.pad_token_id
    if loaded.is_encoder_decoder:
        inputs = _pad(prompts, pad).to(device)
        labels = _pad(targets, -100).to(device)
        logits = loaded.model(input_ids=inputs, attention_mask=(_pad(prompts, -1) != -1).to(device), labels=labels).logits
    else:
        # One right-padded sequence per row: prompt then target; only target positions are scored.
        joined = [p + t for p, t in zip(prompts, targets)]
        labels = _pad([[-100] * len(p) + t for p, t in zip(prompts, targets)], -100).to(device)
        mask = (_pad(joined, -1) != -1).to(device)
        logits = loaded.model(input_ids=_pad(joined, pad).to(device), attention_mask=mask).logits
        logits, labels = logits[:, :-1], labels[:, 1:]  # position t predicts token t+1
    losses = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )  # (batch, seq)
    counts = (labels != -100).sum(dim=1)
    return torch.stack([losses.sum(dim=1), counts.float()], dim=1).cpu().numpy()


METRICS: dict[str, Callable[[MetricInput], dict[str, Statistic]]] = {
    "rouge": _rouge,
    "bleu": _bleu,
    "exact_match": _exact_match,
    "toxicity": _toxicity,
    "perplexity": _perplexity,
    "length": _length,
    "distinct": _distinct,
    "repetition": _repetition,
    "names_in_source": _names_in_source,
}
REFERENCE_FREE = ("toxicity", "length", "distinct", "repetition", "names_in_source")
"""Metrics that read only the outputs, so they run on rows that have a prompt and no completion."""


def check_references(metrics: list[str], references: list[str | None], wheres: list[str]) -> None:
    """Fail before any generation when a metric that needs references meets a row without one."""
    needing = [name for name in metrics if name not in REFERENCE_FREE]
    missing = next((where for reference, where in zip(references, wheres) if reference is None), None)
    if needing and missing is not None:
        raise UserError(f"{missing}: metric '{needing[0]}' needs a reference (a completion) and this row has none; "
                        f"on prompt-only rows use {', '.join(REFERENCE_FREE)}")


def parse_metrics(values: list[str] | str) -> list[str]:
    """`rouge,bleu` or repeated flags -> ["rouge", "bleu"]; an unknown name is an error."""
    names = [part.strip() for value in ([values] if isinstance(values, str) else values) for part in value.split(",")]
    names = [name for name in names if name] or ["rouge"]
    for name in names:
        if name not in METRICS:
            raise UserError(f"unknown metric '{name}'; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def statistics(data: MetricInput, metrics: list[str]) -> dict[str, Statistic]:
    """Per-example statistics of every metric asked for, ready for the bootstrap (or a paired comparison)."""
    if not data.predictions:
        raise UserError("nothing to evaluate: no predictions")
    check_references(metrics, data.references, data.wheres)
    return {metric_name: statistic for name in metrics for metric_name, statistic in METRICS[name](data).items()}


def score(data: MetricInput, metrics: list[str], resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """`{metric_name: {"mean", "ci95", "n", ...}}` for every metric asked for."""
    return {name: bootstrap_summary(statistic, resamples, seed) for name, statistic in statistics(data, metrics).items()}


# Which way is better, said once for every metric llmcycle reports: +1 higher is better, -1 lower is better,
# 0 neither (a length is not good or bad by itself). Tables and reports colour a change by this, never by its sign.
LOWER_IS_BETTER = (("toxicity", "perplexity", "latency", "loss", "ece", "repetition"), ("_loss", "_seconds", "_ms", "_ece"))
"""Prefixes and suffixes of metric names where lower is better (toxicity_max, eval_loss, calibration_ece, ...)."""
NEUTRAL = ("length",)


def direction(metric: str) -> int:
    """+1 where a higher value is better, -1 where lower is better, 0 where neither (see LOWER_IS_BETTER)."""
    name = metric.split("@")[0]
    if name.startswith(NEUTRAL):
        return 0
    prefixes, suffixes = LOWER_IS_BETTER
    return -1 if name.startswith(prefixes) or name.endswith(suffixes) else 1


def verdict(metric: str, change: float) -> str:
    """'better', 'worse' or 'same' (no change, or a metric without a direction) for a change in `metric`."""
    sign = direction(metric) * ((change > 0) - (change < 0))
    return "better" if sign > 0 else "worse" if sign < 0 else "same"
