"""Reward models: a scalar score for (prompt, response), learnt from human preferences.

The InstructGPT recipe: a pretrained backbone with a one-output head (`AutoModelForSequenceClassification`,
num_labels=1) reads prompt and response as a text pair and is trained on pairs (chosen, rejected) with the
Bradley-Terry loss

    loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected))

so the score difference models the log-odds that labellers prefer the chosen response. Rankings of several
responses are expanded into every ordered pair by `data.preferences.load_pairs`. Any encoder (BERT, RoBERTa,
MiniLM) or decoder (GPT-2, Llama) backbone works; encoder-decoder ones work where transformers has a
sequence-classification head for them and their tokenizer marks text pairs with EOS (T5 and BART pool the
last EOS token). Every weight trains. Pairs are read through `reward_sources.reward_inputs`, the same function PPO
scores with, so training and scoring see the same tokens.

Our own loop (as in finetune.py) rather than trl's RewardTrainer: it gives the run contract as it is, namely a
folder that appears complete or not at all, checkpoints that resume to the same weights, and one data order
for every backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import above, at_least, check_fields
from ..console import note
from ..data.preferences import Pair, load_pairs
from ..errors import UserError
from ..evaluate.stats import Statistic, bootstrap_summary, mean_of_first
from ..models import context_window, ensure_pad_token, load_tokenizer, locate, pick_device, resolve_dtype
from ..train.distributed import Distributed, DistributedSettings
from ..train.run import Optimization, StepResult, Trainer, autocast_for, peak_memory_bytes, run_training, summary_table
from ..train.settings import DataSettings, ModelSettings, RunSettings
from ..train.sft_data import epoch_batches
from .reward_sources import reward_inputs

MAX_GRAD_NORM = 1.0
"""Gradient clipping, as in the Hugging Face Trainer's default."""


@dataclass
class RewardConfig(RunSettings, ModelSettings, DataSettings, DistributedSettings):
    """A reward-model run; saved as DIR/config.yaml."""

    model: str = ""
    """Backbone: any encoder or decoder (minilm is the bundled all-MiniLM-L6-v2), a folder or a hub id."""
    data: str = ""
    """Preference rows: prompt/chosen/rejected, or prompt/responses/ranking (1 = best)."""
    eval_data: str | None = None
    """Held-out preference rows for the pairwise accuracy (default: the training pairs)."""
    out: str = ""
    """Run folder to write."""
    epochs: int = at_least(1, 1)
    """Passes over the training pairs (unless max_steps is set)."""
    max_steps: int | None = at_least(None, 1)
    """Optimizer steps to run; overrides epochs."""
    lr: float = above(2e-5, 0)
    """Peak learning rate (every weight trains)."""
    batch_size: int = at_least(8, 1)
    """Pairs per step (each pair is two forward rows)."""
    max_length: int = at_least(512, 2)
    """Longest tokenised prompt + response; longer ones are cut (the longer side first)."""
    warmup_steps: int = at_least(0, 0)
    """Steps of linear learning-rate warm-up, then linear decay to 0."""
    weight_decay: float = at_least(0.0, 0)
    """AdamW weight decay."""
    eval_every: int | None = at_least(None, 1)
    """Score the eval pairs every N steps (and always at the end)."""

    def validate(self) -> None:
        check_fields(self, required=("model", "data", "out"))
        self.validate_distributed()


# ---------------------------------------------------------------- setup


def load_backbone(cfg: RewardConfig):
    """(model with a fresh one-output head, tokenizer with a pad token) on the training device."""
    from transformers import AutoModelForSequenceClassification

    source = locate(cfg.model)
    if source.adapters:
        raise UserError(f"{cfg.model} is an adapter; merge it first (llmcycle merge) to use it as a reward-model backbone")
    base = str(Path(source.base).resolve()) if Path(source.base).exists() else source.base
    device = pick_device()
    dtype = torch.float32 if cfg.dtype == "auto" else resolve_dtype(cfg.dtype, device)
    tokenizer = load_tokenizer(base, trust_remote_code=cfg.trust_remote_code)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, dtype=dtype, ignore_mismatched_sizes=True, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UserError(f"cannot load {cfg.model} with a sequence-classification head (a reward model needs one; "
                        f"encoders such as BERT and decoders such as GPT-2 have it): {reason}") from exc
    model.config.problem_type = "regression"  # one real-valued output
    ensure_pad_token(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id  # decoder backbones pool the last non-pad token
    return model.to(device), tokenizer


def effective_max_length(cfg: RewardConfig, model, tokenizer) -> int:
    window = context_window(model.config, tokenizer)
    if window is not None and cfg.max_length > window:
        note(f"--max-length {cfg.max_length} is beyond the model's context window; using {window}")
        return window
    return cfg.max_length


def usable_pairs(pairs: list[Pair], tokenizer, max_length: int, source: str) -> list[Pair]:
    """Drop pairs whose chosen and rejected inputs are the same tokens once cut to `max_length`."""
    kept = []
    for start in range(0, len(pairs), 256):
        chunk = pairs[start : start + 256]
        responses = [p.chosen for p in chunk] + [p.rejected for p in chunk]
        encoded = reward_inputs(tokenizer, [p.prompt for p in chunk] * 2, responses, max_length)
        ids, mask = encoded["input_ids"], encoded["attention_mask"]  # (2 * chunk, width): chosen rows, then rejected
        half = len(chunk)
        same = (ids[:half] == ids[half:]).all(dim=1) & (mask[:half] == mask[half:]).all(dim=1)
        kept += [pair for pair, equal in zip(chunk, same.tolist()) if not equal]
    if len(kept) < len(pairs):
        note(f"{source}: {len(pairs) - len(kept)} pairs dropped: chosen and rejected are the same within --max-length {max_length}")
    if not kept:
        raise UserError(f"{source}: no pair differs within --max-length {max_length}; raise --max-length")
    return kept


def load_usable_pairs(cfg: RewardConfig, source: str, tokenizer, max_length: int) -> list[Pair]:
    pairs = load_pairs(source, split=cfg.split, skip_bad_rows=cfg.skip_bad_rows)
    return usable_pairs(pairs, tokenizer, max_length, source)


def probe(model, tokenizer, pairs: list[Pair], max_length: int, name: str) -> None:
    """Score a couple of pairs before anything is written, so a backbone that cannot read pairs fails early."""
    try:
        with torch.no_grad():
            pair_scores(model, tokenizer, pairs[:2], max_length)
    except (ValueError, RuntimeError, IndexError, TypeError) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise  # out of memory is not a backbone that cannot read pairs
        reason = " ".join(str(exc).split())[:200]
        if "<eos>" in reason.lower():  # T5 and BART pool the last EOS token of the pair
            reason += " (its tokenizer must end both sides of a text pair with EOS, as T5's and BART's own tokenizers do)"
        raise UserError(f"{name} cannot score (prompt, response) pairs as a reward model: {reason}") from exc


# ---------------------------------------------------------------- scoring and the loss


def pair_scores(model, tokenizer, pairs: list[Pair], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (batch,) of the chosen and of the rejected responses, from one forward pass over both."""
    prompts = [p.prompt for p in pairs]
    inputs = reward_inputs(tokenizer, prompts * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs], max_length)
    scores = model(**inputs.to(next(model.parameters()).device)).logits[:, 0].float()  # (2 * batch,)
    return scores.chunk(2)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair -log P(chosen preferred) = -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen - rejected)


@torch.no_grad()
def score_all(model, tokenizer, pairs: list[Pair], cfg: RewardConfig, max_length: int, autocast,
              dist: Distributed | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Chosen and rejected rewards of every pair, without dropout (each process scores its share)."""
    dist = dist or Distributed()
    was_training = model.training
    model.eval()

    def score(part: list[Pair]) -> list[tuple[float, float]]:
        with autocast():
            chosen, rejected = pair_scores(dist.unwrap(model), tokenizer, part, max_length)
        return list(zip(chosen.tolist(), rejected.tolist()))

    scored = dist.map_chunks(pairs, cfg.batch_size, score)
    model.train(was_training)
    return np.array([c for c, _ in scored], dtype=np.float64), np.array([r for _, r in scored], dtype=np.float64)


def pair_metrics(chosen: np.ndarray, rejected: np.ndarray) -> dict:
    """Pairwise accuracy (with a bootstrap 95% interval), mean loss and mean margin of scored pairs."""
    margin = chosen - rejected
    correct = (margin > 0).astype(np.float64)[:, None]  # (pairs, 1): 1 where the chosen response scores higher
    loss = np.logaddexp(0.0, -margin)  # -log sigmoid(margin), stable for large margins
    return {"pairwise_accuracy": bootstrap_summary(Statistic(correct, mean_of_first)),
            "loss": float(loss.mean()), "mean_margin": float(margin.mean())}


# ---------------------------------------------------------------- the run


def train_reward(cfg: RewardConfig, resume: bool = False) -> dict:
    """Train a reward model; writes DIR/model, config.yaml, log.jsonl, metrics.json. Returns the metrics.

    `pairwise_accuracy`, `eval_loss` and `mean_margin` are measured on the eval pairs, or on the training pairs
    when no eval data is given; `pairwise_accuracy_on` says which.
    """
    return run_training(["reward"], cfg, resume, RewardTrainer)


class RewardTrainer(Trainer):
    """Backbone, pairs, step and metrics of a Bradley-Terry reward model."""

    description, max_grad_norm = "reward model", MAX_GRAD_NORM
    cfg: RewardConfig

    def build(self) -> torch.nn.Module:
        cfg = self.cfg
        model, self.tokenizer = load_backbone(cfg)  # the seed set by the skeleton initialises the new head
        self.device = next(model.parameters()).device
        self.max_length = effective_max_length(cfg, model, self.tokenizer)
        self.train_pairs = load_usable_pairs(cfg, cfg.data, self.tokenizer, self.max_length)
        self.eval_pairs = load_usable_pairs(cfg, cfg.eval_data, self.tokenizer, self.max_length) if cfg.eval_data else []
        probe(model.eval(), self.tokenizer, self.train_pairs, self.max_length, cfg.model)
        self.global_batch = cfg.batch_size * self.dist.world_size
        self.per_epoch = math.ceil(len(self.train_pairs) / self.global_batch)
        self.total_steps = cfg.max_steps or self.per_epoch * cfg.epochs
        self.autocast = autocast_for(cfg.dtype, self.device)
        return model.train()

    def optimization(self) -> Optimization:
        return Optimization(self.cfg.lr, self.cfg.weight_decay, warmup_steps=self.cfg.warmup_steps)

    def announce(self) -> None:
        cfg, dist = self.cfg, self.dist
        note(f"reward model on {dist.unwrap(self.model).config.model_type} {Path(cfg.model).name}: {self.trainable_params:,} "
             f"parameters; {len(self.train_pairs)} pairs, {self.total_steps} steps of {self.global_batch}, {self.device.type}"
             + (f", {dist.describe()}" if dist.enabled else ""))

    def initial_state(self) -> dict:
        return {"last_accuracy": None}

    def step(self, step: int, state: dict) -> StepResult:
        epoch, position = divmod(step - 1, self.per_epoch)
        step_pairs = [self.train_pairs[i] for i in epoch_batches(len(self.train_pairs), self.global_batch, self.cfg.seed, epoch)[position]]
        batch, weight = self.dist.shard(step_pairs)
        with self.autocast():
            chosen, rejected = pair_scores(self.model, self.tokenizer, batch, self.max_length)
        losses = bradley_terry_loss(chosen, rejected)
        margin = (chosen - rejected).detach()
        loss_sum, correct, margin_sum = self.dist.sum(losses.sum().item() * weight, (margin > 0).sum().item() * weight,
                                                      margin.sum().item() * weight)
        self.dist.backward(losses.sum() * (self.dist.loss_scale(len(step_pairs)) * weight))
        state["last_accuracy"] = correct / len(step_pairs)
        return StepResult(loss_sum / len(step_pairs), {"accuracy": state["last_accuracy"], "margin": margin_sum / len(step_pairs)},
                          per_second={"pairs_per_second": len(step_pairs)})

    def scored(self, pairs: list[Pair]) -> dict:
        return pair_metrics(*score_all(self.model, self.tokenizer, pairs, self.cfg, self.max_length, self.autocast, self.dist))

    def after_step(self, step: int, state: dict) -> dict:
        if not (self.eval_pairs and self.cfg.eval_every and step % self.cfg.eval_every == 0):
            return {}
        scored = self.scored(self.eval_pairs)
        return {"eval_loss": scored["loss"], "eval_accuracy": scored["pairwise_accuracy"]["mean"], "eval_margin": scored["mean_margin"]}

    def final_metrics(self, state: dict, dist: Distributed) -> dict:
        final = self.scored(self.eval_pairs or self.train_pairs)
        return {
            "method": "reward", "pairwise_accuracy": final["pairwise_accuracy"],
            "pairwise_accuracy_on": "eval" if self.eval_pairs else "train", "eval_loss": final["loss"],
            "mean_margin": final["mean_margin"], "train_loss": state["last_loss"], "train_accuracy": state["last_accuracy"],
            "pairs": len(self.train_pairs), "eval_pairs": len(self.eval_pairs), "steps": state["step"],
            "world_size": dist.world_size, "trainable_params": self.trainable_params, "total_params": self.total_params,
            "trainable_share": self.trainable_params / self.total_params, "peak_memory_bytes": peak_memory_bytes(self.device),
            "wall_time_s": state["train_seconds"],
        }

    def summary(self, metrics: dict, weights_dir: Path) -> None:
        accuracy = metrics["pairwise_accuracy"]
        summary_table("reward model", [
            (f"pairwise accuracy ({metrics['pairwise_accuracy_on']}, {accuracy['n']} pairs)",
             f"{accuracy['mean']:.3f} [{accuracy['ci95'][0]:.3f}, {accuracy['ci95'][1]:.3f}]"),
            ("mean margin (chosen - rejected)", f"{metrics['mean_margin']:.4f}"),
            (f"loss ({metrics['pairwise_accuracy_on']})", f"{metrics['eval_loss']:.4f}"),
            ("train loss (last step)", f"{metrics['train_loss']:.4f}"),
            ("parameters", f"{metrics['trainable_params']:,}"),
            ("peak memory", f"{metrics['peak_memory_bytes'] / 2**20:,.0f} MiB"),
            ("wall time", f"{metrics['wall_time_s']:.1f} s"),
            ("size on disk", f"{metrics['size_on_disk_bytes'] / 2**20:,.2f} MiB ({weights_dir})"),
        ])
