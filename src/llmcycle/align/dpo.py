"""Direct preference optimisation (Rafailov et al., 2023) for encoder-decoder and decoder-only policies.

For each pair, the summed log-probabilities of the chosen and rejected completions given the prompt, under
the policy (pc, pr) and the frozen reference (rc, rr), give the loss

    loss = -log sigmoid(beta * ((pc - rc) - (pr - rr)))

and the implicit rewards beta * (pc - rc) and beta * (pr - rr). The reward margin (chosen minus rejected)
and the reward accuracy (the share of pairs with a margin above 0) say how far the policy has moved towards
the preferences. The policy and its reference come from policy.py: a fresh LoRA adapter against the base with
the adapter disabled, a full fine-tune against a frozen copy, or an adapter run continued against itself as it
was. Dropout is off throughout (as trl does by default), so the implicit rewards do not depend on a dropout draw.

Our own loop for both model kinds rather than trl's DPOTrainer, which was read and tried for decoder-only
models: current trl no longer supports encoder-decoder models, so we need this loop anyway, and the
Trainer does not fit the run contract as it is: it writes `checkpoint-N/` folders into the output directory
as it goes (not `checkpoints/step-N`, written under a temporary name), resumes through its own format, and
would give the two model kinds different data orders, tokenisation and logs. One loop gives both kinds the
same pair order (`sft_data.epoch_batches`), the same token layout as fine-tuning (`sft_data.tokenize` +
`collate`: prompt and completion tokenised separately, EOS after the completion), the same checkpoints and
exact resume. tests/test_dpo.py checks that the loss and implicit rewards equal trl's DPOTrainer (sigmoid
loss) on the same pairs and models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..config import above, at_least, check_fields
from ..console import note
from ..data import Example
from ..data.preferences import Pair, load_pairs
from ..errors import UserError
from ..models import LoadedModel
from ..train.distributed import Distributed, DistributedSettings
from ..train.run import Optimization, StepResult, Trainer, autocast_for, peak_memory_bytes, run_training, summary_table
from ..train.settings import DataSettings, LoRASettings, ModelSettings, PolicyTuning, RunSettings
from ..train.sft_data import Tokenized, collate, completion_token_losses, epoch_batches, tokenize
from .policy import Policy, announce, build_policy, load_policy_base

MAX_GRAD_NORM = 1.0
"""Gradient clipping, as trl's DPOConfig does by default."""
DEFAULT_LR = {"lora": 5e-5, "full": 5e-6}


@dataclass
class DPOConfig(LoRASettings, RunSettings, ModelSettings, DataSettings, DistributedSettings):
    """A DPO run; saved as DIR/config.yaml."""

    model: str = ""
    """Policy to start from (a model, or an adapter run whose adapter keeps training); also the reference."""
    data: str = ""
    """Preference rows: prompt/chosen/rejected, or prompt/responses/ranking (1 = best)."""
    out: str = ""
    """Run folder to write."""
    method: Literal["dpo"] = "dpo"
    """dpo."""
    eval_data: str | None = None
    """Held-out preference rows: reward margin, accuracy and loss of the final policy."""
    beta: float = above(0.1, 0)
    """Strength of the implicit KL constraint to the reference (higher stays closer)."""
    epochs: int = at_least(1, 1)
    """Passes over the training pairs (unless max_steps is set)."""
    max_steps: int | None = at_least(None, 1)
    """Optimizer steps to run; overrides epochs."""
    batch_size: int = at_least(8, 1)
    """Pairs per step."""
    lr: float | None = above(None, 0)
    """Peak learning rate, decaying linearly to 0 (default 5e-5 with LoRA, 5e-6 full)."""
    max_length: int = at_least(512, 2)
    """Longest tokenised row (decoder-only: prompt + completion; encoder-decoder: each side); longer ones are cut."""
    tune: PolicyTuning = "lora"
    """lora (an adapter trains: a new one, or the adapter run's) or full (every weight; a frozen copy is the reference)."""
    def validate(self) -> None:
        check_fields(self, required=("model", "data", "out"))
        self.validate_distributed()

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.tune]

    @property
    def is_adapter(self) -> bool:
        return self.tune == "lora"


@dataclass(frozen=True)
class TokenizedPair:
    chosen: Tokenized
    rejected: Tokenized


# ---------------------------------------------------------------- data


def tokenize_pairs(pairs: list[Pair], tokenizer, is_encoder_decoder: bool, max_length: int, source: str) -> list[TokenizedPair]:
    """Chosen and rejected rows in fine-tuning's token layout; pairs that no longer differ once cut are dropped."""
    as_examples = lambda side: [Example(p.prompt, getattr(p, side), p.where, i) for i, p in enumerate(pairs)]  # noqa: E731
    chosen, cut_chosen, _ = tokenize(as_examples("chosen"), tokenizer, is_encoder_decoder, max_length)
    rejected, cut_rejected, _ = tokenize(as_examples("rejected"), tokenizer, is_encoder_decoder, max_length)
    if len(chosen) != len(pairs) or len(rejected) != len(pairs):
        # Some rows had no completion token left within max_length: find out which, pair by pair.
        one = lambda example: tokenize([example], tokenizer, is_encoder_decoder, max_length)[0]  # noqa: E731
        kept = [(c, r) for c, r in ((one(c), one(r)) for c, r in zip(as_examples("chosen"), as_examples("rejected"))) if c and r]
        chosen, rejected = [c[0] for c, _ in kept], [r[0] for _, r in kept]
        note(f"{source}: {len(pairs) - len(kept)} pairs dropped: the prompt fills --max-length {max_length}")
    rows = [TokenizedPair(c, r) for c, r in zip(chosen, rejected) if (c.input_ids, c.labels) != (r.input_ids, r.labels)]
    if len(rows) < len(chosen):
        note(f"{source}: {len(chosen) - len(rows)} pairs dropped: chosen and rejected are the same within --max-length {max_length}")
    if cut_chosen or cut_rejected:
        note(f"{source}: {max(cut_chosen, cut_rejected)} pairs were longer than --max-length {max_length} and were cut")
    if not rows:
        raise UserError(f"{source}: no usable pair within --max-length {max_length}; raise --max-length")
    return rows


def pair_batch(rows: list[TokenizedPair], pad_id: int, is_encoder_decoder: bool) -> dict[str, torch.Tensor]:
    """One right-padded batch of 2 * len(rows) rows: every chosen completion, then every rejected one."""
    return collate([r.chosen for r in rows] + [r.rejected for r in rows], pad_id, is_encoder_decoder)


# ---------------------------------------------------------------- log-probabilities and the loss


def sequence_log_probs(model, batch: dict[str, torch.Tensor], is_encoder_decoder: bool) -> torch.Tensor:
    """(rows,) summed log-probability of each row's completion tokens given its prompt.

    The forward of fine-tuning's loss (`sft_data.completion_token_losses`), summed per row instead of over the batch.
    """
    losses, rows = completion_token_losses(model, batch, is_encoder_decoder)
    return -torch.zeros(len(batch["labels"]), dtype=losses.dtype, device=losses.device).index_add(0, rows, losses)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and implicit rewards of the chosen and rejected completions, (pairs,) each."""
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards


@dataclass
class Scorer:
    """Summed log-probabilities of completions under the policy and under its reference."""

    model: torch.nn.Module
    """What trains: the model itself, or the DDP wrapper around it (its forward synchronises gradients)."""
    inner: torch.nn.Module
    """The model inside any wrapper: reference passes need no gradient synchronisation."""
    policy: Policy
    is_encoder_decoder: bool

    def log_probs(self, batch: dict) -> torch.Tensor:
        return sequence_log_probs(self.model, batch, self.is_encoder_decoder)

    @torch.no_grad()
    def reference_log_probs(self, batch: dict) -> torch.Tensor:
        if self.policy.frozen_copy is not None:
            return sequence_log_probs(self.policy.frozen_copy, batch, self.is_encoder_decoder)
        with self.policy.reference(self.inner):
            return sequence_log_probs(self.inner, batch, self.is_encoder_decoder)


def dpo_batch(policy: Scorer, batch: dict, beta: float, dist: Distributed | None = None, pairs: int | None = None,
              weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Loss of a batch (with gradients, scaled for `dist`) and the step's statistics, means over its `pairs` pairs.

    On several processes `batch` is this process's share of the step's pairs; the statistics cover all of them.
    """
    dist = dist or Distributed()
    policy_logps = policy.log_probs(batch)  # (2 * pairs,): chosen rows, then rejected rows
    reference_logps = policy.reference_log_probs(batch)
    losses, chosen, rejected = dpo_loss(*policy_logps.chunk(2), *reference_logps.chunk(2), beta)
    chosen, rejected = chosen.detach(), rejected.detach()
    margin = chosen - rejected
    logps_chosen, logps_rejected = policy_logps.detach().chunk(2)
    sums = dist.sum(*(weight * float(value.sum()) for value in
                      (losses.detach(), margin, (margin > 0).float(), chosen, rejected, logps_chosen, logps_rejected)))
    count = pairs or len(margin)
    names = ("loss", "reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected", "logps_chosen", "logps_rejected")
    stats = {name: total / count for name, total in zip(names, sums)}
    return losses.sum() * (dist.loss_scale(count) * weight), stats


@torch.no_grad()
def evaluate(scorer: Scorer, rows: list[TokenizedPair], cfg: DPOConfig, pad_id: int, device, autocast,
             dist: Distributed | None = None) -> dict:
    """Loss, reward margin and accuracy of the policy over `rows` (means over pairs; each process scores its share).
    Give a scorer over the unwrapped model: nothing here synchronises gradients."""
    dist = dist or Distributed()

    def score(part: list[TokenizedPair]) -> list[tuple[float, float]]:
        batch = {k: v.to(device) for k, v in pair_batch(part, pad_id, scorer.is_encoder_decoder).items()}
        with autocast():
            loss, chosen, rejected = dpo_loss(*scorer.log_probs(batch).chunk(2), *scorer.reference_log_probs(batch).chunk(2), cfg.beta)
        return list(zip(loss.tolist(), (chosen - rejected).tolist()))

    scored = torch.tensor(dist.map_chunks(rows, cfg.batch_size, score), dtype=torch.float64)  # (pairs, 2)
    loss, margin = scored[:, 0], scored[:, 1]
    return {"loss": loss.mean().item(), "reward_margin": margin.mean().item(), "reward_accuracy": (margin > 0).double().mean().item()}


# ---------------------------------------------------------------- the run


def load_rows(cfg: DPOConfig, loaded: LoadedModel, source: str) -> list[TokenizedPair]:
    pairs = load_pairs(source, split=cfg.split, skip_bad_rows=cfg.skip_bad_rows)
    return tokenize_pairs(pairs, loaded.tokenizer, loaded.is_encoder_decoder, cfg.max_length, source)


def dpo(cfg: DPOConfig, resume: bool = False) -> dict:
    """Run DPO; writes DIR/adapter or DIR/model, config.yaml, log.jsonl, metrics.json. Returns the metrics."""
    return run_training(["align", "--method", "dpo"], cfg, resume, DPOTrainer)


class DPOTrainer(Trainer):
    """Policy, pairs, step and metrics of direct preference optimisation."""

    description, max_grad_norm = "dpo", MAX_GRAD_NORM
    cfg: DPOConfig

    def build(self) -> torch.nn.Module:
        cfg = self.cfg
        loaded, self.adapter_dir = load_policy_base(cfg, "DPO")
        self.loaded, self.tokenizer = loaded, loaded.tokenizer
        self.train_rows = load_rows(cfg, loaded, cfg.data)
        self.eval_rows = load_rows(cfg, loaded, cfg.eval_data) if cfg.eval_data else []
        self.policy = build_policy(loaded, cfg, self.adapter_dir)
        self.inner, self.is_adapter = self.policy.model, self.policy.is_adapter
        self.global_batch = cfg.batch_size * self.dist.world_size
        self.per_epoch = math.ceil(len(self.train_rows) / self.global_batch)
        self.total_steps = cfg.max_steps or self.per_epoch * cfg.epochs
        self.autocast = autocast_for(cfg.dtype, loaded.device)
        return self.policy.model

    def optimization(self) -> Optimization:
        return Optimization(self.cfg.learning_rate)

    def announce(self) -> None:
        announce("dpo", self, f"{len(self.train_rows)} pairs, {self.total_steps} steps of {self.global_batch}, beta {self.cfg.beta:g}")

    def initial_state(self) -> dict:
        return {"history": []}

    def step(self, step: int, state: dict) -> StepResult:
        epoch, position = divmod(step - 1, self.per_epoch)
        step_rows = [self.train_rows[i] for i in epoch_batches(len(self.train_rows), self.global_batch, self.cfg.seed, epoch)[position]]
        mine, weight = self.dist.shard(step_rows)
        pad_id, device = self.tokenizer.pad_token_id, self.loaded.device
        batch = {k: v.to(device) for k, v in pair_batch(mine, pad_id, self.loaded.is_encoder_decoder).items()}
        with self.autocast():
            loss, stats = dpo_batch(self.scorer(self.model), batch, self.cfg.beta, self.dist, len(step_rows), weight)
        self.dist.backward(loss)
        state["history"] = state["history"] + [{"reward_margin": stats["reward_margin"], "reward_accuracy": stats["reward_accuracy"]}]
        return StepResult(stats.pop("loss"), stats, per_second={"pairs_per_second": len(step_rows)})

    def scorer(self, model) -> Scorer:
        return Scorer(model, self.inner, self.policy, self.loaded.is_encoder_decoder)

    def describe(self, record: dict) -> str:
        return f"dpo, loss {record['loss']:.4f}, margin {record['reward_margin']:.3f}"

    def final_metrics(self, state: dict, dist: Distributed) -> dict:
        final = None
        if self.eval_rows:
            final = evaluate(self.scorer(self.inner), self.eval_rows, self.cfg, self.tokenizer.pad_token_id, self.loaded.device,
                             self.autocast, dist)
        cfg = self.cfg
        return {"method": "dpo", "tune": cfg.tune, "beta": cfg.beta, **reward_metrics(state["history"], final),
                "train_loss": state["last_loss"], "eval_loss": final["loss"] if final else None,
                "pairs": len(self.train_rows), "eval_pairs": len(self.eval_rows), "steps": state["step"], "world_size": dist.world_size,
                "trainable_params": self.trainable_params, "total_params": self.total_params,
                "trainable_share": self.trainable_params / self.total_params,
                "peak_memory_bytes": peak_memory_bytes(self.loaded.device), "wall_time_s": state["train_seconds"]}

    def summary(self, metrics: dict, weights_dir: Path) -> None:
        summary_table(f"dpo ({metrics['tune']})", [
            (f"reward margin ({metrics['reward_on']})", f"{metrics['reward_margin']:.4f}"),
            (f"reward accuracy ({metrics['reward_on']})", f"{metrics['reward_accuracy']:.3f}"),
            ("reward margin, first step", f"{metrics['reward_margin_first_step']:.4f}"),
            ("train loss (last step)", f"{metrics['train_loss']:.4f}"),
            ("eval loss", "-" if metrics["eval_loss"] is None else f"{metrics['eval_loss']:.4f}"),
            ("trainable parameters", f"{metrics['trainable_params']:,} of {metrics['total_params']:,} ({metrics['trainable_share']:.2%})"),
            ("peak memory", f"{metrics['peak_memory_bytes'] / 2**20:,.0f} MiB"),
            ("wall time", f"{metrics['wall_time_s']:.1f} s"),
            ("size on disk", f"{metrics['size_on_disk_bytes'] / 2**20:,.2f} MiB ({weights_dir})"),
        ])


def reward_metrics(history: list[dict], final: dict | None) -> dict:
    """Reward margin and accuracy: on the eval pairs if given, else the mean over the last quarter of the steps."""
    last = history[-max(1, len(history) // 4):]
    if final is not None:
        margin, accuracy, on = final["reward_margin"], final["reward_accuracy"], "eval"
    else:
        margin = float(np.mean([h["reward_margin"] for h in last]))
        accuracy = float(np.mean([h["reward_accuracy"] for h in last]))
        on = f"train, mean of the last {len(last)} steps"
    return {"reward_margin": margin, "reward_accuracy": accuracy, "reward_on": on,
            "reward_margin_first_step": history[0]["reward_margin"], "reward_accuracy_first_step": history[0]["reward_accuracy"]}
