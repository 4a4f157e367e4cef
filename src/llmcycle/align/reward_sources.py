"""Reward sources for RL: a trained reward model, toxicity, a word's share, or a weighted sum of them.

    --reward rm=runs/rm            a reward-model folder (llmcycle run folder or save_pretrained), weight 1
    --reward runs/rm:0.5           the same, by path, weight 0.5
    --reward toxicity              1 - the offensive-language probability of the response (alt-profanity-check)
    --reward word=thanks:2         the share of the response's words that are "thanks" (a rule-based reward)

Several `--reward` flags add up, each times its weight, like Llama 2's separate helpfulness and safety models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..evaluate.metrics import toxicity_scores
from ..models import context_window, ensure_pad_token, locate, pick_device

WORD = re.compile(r"[\w']+")


def reward_inputs(tokenizer, prompts: list[str], responses: list[str], max_length: int = 512) -> dict:
    """How a reward model reads (prompt, response): as a text pair, for training and scoring alike."""
    return tokenizer(prompts, responses, truncation="longest_first", max_length=max_length, padding=True, return_tensors="pt")


@dataclass
class RewardModel:
    """A sequence-classification model with one output: the scalar reward."""

    model: torch.nn.Module
    tokenizer: object
    name: str

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str], batch_size: int = 16) -> np.ndarray:
        scores = []
        limit = min(512, context_window(self.model.config, self.tokenizer) or 512)
        for start in range(0, len(prompts), batch_size):
            batch = reward_inputs(self.tokenizer, prompts[start : start + batch_size], responses[start : start + batch_size], limit)
            logits = self.model(**batch.to(next(self.model.parameters()).device)).logits  # (batch, 1)
            scores.append(logits[:, 0].float().cpu().numpy())
        return np.concatenate(scores)


def load_reward_model(spec: str) -> RewardModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = locate(spec)
    if source.adapters:
        raise UserError(f"reward model {spec} is an adapter; give a full reward-model folder")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source.base)
        tokenizer = AutoTokenizer.from_pretrained(source.base)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load reward model {spec}: {' '.join(str(exc).split())[:200]}") from exc
    if model.config.num_labels != 1:
        raise UserError(f"{spec} has {model.config.num_labels} outputs; a reward model has one (train it with llmcycle reward)")
    ensure_pad_token(model, tokenizer)
    return RewardModel(model.to(pick_device()).eval(), tokenizer, spec)


@dataclass
class RewardTerm:
    kind: str
    """rm, toxicity or word."""
    argument: str | None
    weight: float


def parse_reward(spec: str) -> RewardTerm:
    """`rm=DIR[:W]`, `DIR[:W]`, `toxicity[:W]` or `word=WORD[:W]`."""
    body, weight = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep:
        try:
            weight, body = float(tail), head
        except ValueError:
            pass
    name, eq, argument = body.partition("=")
    if name == "toxicity" and not eq:
        return RewardTerm("toxicity", None, weight)
    if name in ("rm", "word") and eq and argument:
        return RewardTerm(name, argument, weight)
    if not eq and Path(body).is_dir():
        return RewardTerm("rm", body, weight)
    raise UserError(f"--reward {spec!r}: use rm=DIR, a reward-model folder, toxicity or word=WORD, each optionally :WEIGHT")


class Reward:
    """The weighted sum of reward terms, scoring (prompt, response) pairs."""

    def __init__(self, specs: list[str]):
        if not specs:
            raise UserError("give at least one --reward (rm=DIR, toxicity or word=WORD)")
        self.terms = [parse_reward(spec) for spec in specs]
        self.models = {t.argument: load_reward_model(t.argument) for t in self.terms if t.kind == "rm"}

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        total = np.zeros(len(responses))
        for term in self.terms:
            total += term.weight * self._score(term, prompts, responses)
        return total

    def _score(self, term: RewardTerm, prompts: list[str], responses: list[str]) -> np.ndarray:
        if term.kind == "toxicity":
            return 1.0 - toxicity_scores(responses)
        if term.kind == "word":
            target = term.argument.lower()
            return np.array([_share(WORD.findall(r.lower()), target) for r in responses])
        return self.models[term.argument](prompts, responses)


def _share(words: list[str], target: str) -> float:
    return sum(word == target for word in words) / len(words) if words else 0.0
