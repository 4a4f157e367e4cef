"""Direct preference optimisation (Rafailov et al., 2023) for encoder-decoder and decoder-only policies.

For each pair, the summed log-probabilities of the chosen and rejected completions given the prompt, under
the policy (pc, pr) and the frozen reference (rc, rr), give the loss

    loss = -log sigmoid(beta * ((pc - rc) - (pr - rr)))

and the implicit rewards beta * (pc - rc) and beta * (pr - rr). The reward margin (chosen minus rejected)
and the reward accuracy (the share of pairs with a margin above 0) say how far the policy has moved towards
the preferences. With LoRA the reference is the same base with the adapter disabled, so there is no second
copy; with full fine-tuning it is a frozen copy. Dropout is off throughout (as trl does by default), so the
implicit rewards do not depend on a dropout draw.

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

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..console import note, print_table, progress
from ..data import Example
from ..data.preferences import Pair, load_pairs
from ..errors import UserError
from ..train.finetune import check_out_dir, close_run_folder, main_log, open_run_folder, peak_memory_bytes, save_final
from ..models import LoadedModel, load_base, locate, pick_device, resolve_dtype
from ..train import checkpoints, distributed
from ..train.distributed import Distributed, DistributedSettings
from ..train.methods import count_parameters, lora_config
from ..train.sft_data import Tokenized, collate, completion_token_losses, epoch_batches, tokenize

MAX_GRAD_NORM = 1.0
"""Gradient clipping, as trl's DPOConfig does by default."""
DEFAULT_LR = {"lora": 5e-5, "full": 5e-6}


@dataclass
class DPOConfig(DistributedSettings):
    """A DPO run; saved as DIR/config.yaml."""

    model: str = ""
    """Policy to start from; it is also the reference the policy is kept close to."""
    data: str = ""
    """Preference rows: prompt/chosen/rejected, or prompt/responses/ranking (1 = best)."""
    out: str = ""
    """Run folder to write."""
    method: str = "dpo"
    """dpo."""
    eval_data: str | None = None
    """Held-out preference rows: reward margin, accuracy and loss of the final policy."""
    beta: float = 0.1
    """Strength of the implicit KL constraint to the reference (higher stays closer)."""
    epochs: int = 1
    """Passes over the training pairs (unless max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides epochs."""
    batch_size: int = 8
    """Pairs per step."""
    lr: float | None = None
    """Peak learning rate, decaying linearly to 0 (default 5e-5 with LoRA, 5e-6 full)."""
    max_length: int = 512
    """Longest tokenised row (decoder-only: prompt + completion; encoder-decoder: each side); longer ones are cut."""
    tune: str = "lora"
    """lora (the reference is the base with the adapter disabled) or full (a frozen copy is the reference)."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: float = 16.0
    """LoRA alpha (the update is scaled by alpha / r)."""
    lora_targets: str = "attention"
    """LoRA targets: attention, all-linear or names such as q,v."""
    seed: int = 0
    """Seed for pair order and the adapter's initialisation."""
    dtype: str = "auto"
    """auto: float32 weights, with bfloat16 autocast on a GPU; or float32, bfloat16, float16 weights."""
    save_every: int | None = None
    """Write a checkpoint every N steps."""
    template: str | None = None
    """Not used by DPO: preference rows already hold prompt, chosen and rejected."""
    split: str | None = None
    """Split of a hub dataset."""
    skip_bad_rows: bool = False
    """Skip unusable rows instead of stopping."""
    trust_remote_code: bool = False
    """Allow code shipped with a hub model to run."""

    def validate(self) -> None:
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise UserError(f"--{name} is required")
        if self.method != "dpo":
            raise UserError(f"DPOConfig is for --method dpo (got {self.method!r})")
        if self.tune not in ("lora", "full"):
            raise UserError(f"--tune must be lora or full (got {self.tune!r})")
        counts = {"epochs": self.epochs, "batch_size": self.batch_size, "lora_rank": self.lora_rank,
                  **{k: v for k, v in (("max_steps", self.max_steps), ("save_every", self.save_every)) if v is not None}}
        for name, value in counts.items():
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.max_length < 2:
            raise UserError("--max-length must be at least 2")
        if not self.beta > 0 or (self.lr is not None and not self.lr > 0) or not self.lora_alpha > 0:
            raise UserError("--beta, --lr and --lora-alpha must be above 0")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError("--dtype must be auto, float32, bfloat16 or float16")
        if self.template is not None:
            raise UserError("--template does not apply to dpo: preference rows already hold prompt, chosen and rejected")
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
class Policy:
    """The trained model, and how to score under the reference."""

    model: torch.nn.Module
    """What trains: the model itself, or the DDP wrapper around it."""
    reference: torch.nn.Module | None
    """A frozen copy (full); None with LoRA, where the reference is the model with its adapter disabled."""
    is_encoder_decoder: bool
    inner: torch.nn.Module | None = None
    """The model inside a DDP wrapper (the reference pass needs no gradient synchronisation)."""

    def log_probs(self, batch: dict) -> torch.Tensor:
        return sequence_log_probs(self.model, batch, self.is_encoder_decoder)

    @torch.no_grad()
    def reference_log_probs(self, batch: dict) -> torch.Tensor:
        if self.reference is not None:
            return sequence_log_probs(self.reference, batch, self.is_encoder_decoder)
        inner = self.inner or self.model
        with inner.disable_adapter():
            return sequence_log_probs(inner, batch, self.is_encoder_decoder)


def dpo_batch(policy: Policy, batch: dict, beta: float, dist: Distributed | None = None, pairs: int | None = None,
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
def evaluate(policy: Policy, rows: list[TokenizedPair], cfg: DPOConfig, pad_id: int, device, autocast,
             dist: Distributed | None = None) -> dict:
    """Loss, reward margin and accuracy of the policy over `rows` (means over pairs; each process scores its share)."""
    dist = dist or Distributed()
    scorer = Policy(policy.inner or policy.model, policy.reference, policy.is_encoder_decoder)  # no DDP wrapper to sync

    def score(part: list[TokenizedPair]) -> list[tuple[float, float]]:
        batch = {k: v.to(device) for k, v in pair_batch(part, pad_id, policy.is_encoder_decoder).items()}
        with autocast():
            loss, chosen, rejected = dpo_loss(*scorer.log_probs(batch).chunk(2), *scorer.reference_log_probs(batch).chunk(2), cfg.beta)
        return list(zip(loss.tolist(), (chosen - rejected).tolist()))

    scored = torch.tensor(dist.map_chunks(rows, cfg.batch_size, score), dtype=torch.float64)  # (pairs, 2)
    loss, margin = scored[:, 0], scored[:, 1]
    return {"loss": loss.mean().item(), "reward_margin": margin.mean().item(), "reward_accuracy": (margin > 0).double().mean().item()}


# ---------------------------------------------------------------- setup


def load_policy(cfg: DPOConfig) -> LoadedModel:
    source = locate(cfg.model)
    if source.adapters:
        raise UserError(f"{cfg.model} is an adapter; merge it first (llmcycle merge) to use it as a DPO policy")
    base = str(Path(source.base).resolve()) if Path(source.base).exists() else source.base
    dtype = torch.float32 if cfg.dtype == "auto" else resolve_dtype(cfg.dtype, pick_device())
    loaded = load_base(base, torch_dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    loaded.model.to(pick_device())
    return loaded


def build_policy(loaded: LoadedModel, cfg: DPOConfig) -> Policy:
    import peft

    if cfg.tune == "full":
        reference = copy.deepcopy(loaded.model).eval().requires_grad_(False)
        return Policy(loaded.model.eval(), reference, loaded.is_encoder_decoder)
    lora = lora_config(loaded.model, loaded.is_encoder_decoder, cfg.lora_rank, cfg.lora_alpha, 0.0, cfg.lora_targets)
    try:
        model = peft.get_peft_model(loaded.model, lora)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"cannot add LoRA to this model: {' '.join(str(exc).split())[:300]}") from None
    return Policy(model.eval(), None, loaded.is_encoder_decoder)


def load_rows(cfg: DPOConfig, loaded: LoadedModel, source: str) -> list[TokenizedPair]:
    pairs = load_pairs(source, split=cfg.split, skip_bad_rows=cfg.skip_bad_rows)
    return tokenize_pairs(pairs, loaded.tokenizer, loaded.is_encoder_decoder, cfg.max_length, source)


def _autocast(cfg: DPOConfig, device):
    if device.type == "cuda" and cfg.dtype == "auto":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return contextlib.nullcontext


# ---------------------------------------------------------------- the run


def dpo(cfg: DPOConfig, resume: bool = False) -> dict:
    """Run DPO; writes DIR/adapter or DIR/model, config.yaml, log.jsonl, metrics.json. Returns the metrics."""
    cfg.validate()
    return distributed.run(["align", "--method", "dpo"], cfg, resume, _dpo, check_out_dir)


def _dpo(cfg: DPOConfig, resume: bool, dist: Distributed) -> dict:
    out = Path(cfg.out)
    resume_from = check_out_dir(cfg, out, resume)
    dist.barrier()  # every process has looked at --out before the main one writes there
    torch.manual_seed(cfg.seed)
    loaded = load_policy(cfg)
    train_rows = load_rows(cfg, loaded, cfg.data)
    eval_rows = load_rows(cfg, loaded, cfg.eval_data) if cfg.eval_data else []
    policy = build_policy(loaded, cfg)
    if resume_from is not None:
        checkpoints.load_weights(resume_from, policy.model, cfg.is_adapter)
    trainable, total = count_parameters(policy.model)
    policy.inner, policy.model = policy.model, dist.wrap(policy.model)
    if dist.enabled:
        torch.manual_seed(cfg.seed + dist.rank)
    per_epoch = math.ceil(len(train_rows) / (cfg.batch_size * dist.world_size))
    total_steps = cfg.max_steps or per_epoch * cfg.epochs
    optimizer, scheduler = make_optimizer(policy.model, cfg, total_steps)
    policy.model, optimizer = dist.prepare_optimizer(policy.model, optimizer)
    autocast = _autocast(cfg, loaded.device)
    note(f"dpo ({cfg.tune}) on {loaded.kind} {Path(loaded.name).name}: {trainable:,} trainable of {total:,} parameters; "
         f"{len(train_rows)} pairs, {total_steps} steps of {cfg.batch_size * dist.world_size}, beta {cfg.beta:g}"
         + (f", {dist.describe()}" if dist.enabled else ""))

    state = {"step": 0, "train_seconds": 0.0, "last_loss": None, "history": []}
    state = open_run_folder(cfg, out, state, resume_from, optimizer, scheduler, dist, policy.model)
    state = _loop(cfg, policy, loaded, train_rows, optimizer, scheduler, state, per_epoch, total_steps, autocast, out, dist)

    final = evaluate(policy, eval_rows, cfg, loaded.tokenizer.pad_token_id, loaded.device, autocast, dist) if eval_rows else None
    weights_dir = save_final(out, policy.model, loaded.tokenizer, cfg.is_adapter, dist)
    metrics = {"method": "dpo", "tune": cfg.tune, "beta": cfg.beta, **reward_metrics(state["history"], final),
               "train_loss": state["last_loss"], "eval_loss": final["loss"] if final else None,
               "pairs": len(train_rows), "eval_pairs": len(eval_rows), "steps": state["step"], "world_size": dist.world_size,
               "trainable_params": trainable, "total_params": total, "trainable_share": trainable / total,
               "peak_memory_bytes": peak_memory_bytes(loaded.device), "wall_time_s": state["train_seconds"]}
    return close_run_folder(out, metrics, weights_dir, dist, lambda m: _print_summary(m, weights_dir))


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


def make_optimizer(model, cfg: DPOConfig, total_steps: int):
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=total_steps)
    return optimizer, scheduler


def _loop(cfg, policy: Policy, loaded, rows, optimizer, scheduler, state, per_epoch, total_steps, autocast, out: Path,
          dist: Distributed) -> dict:
    device, pad_id = loaded.device, loaded.tokenizer.pad_token_id
    global_batch = cfg.batch_size * dist.world_size
    with progress() as bar, main_log(out, dist) as log:
        task = bar.add_task("dpo", total=total_steps, completed=state["step"])
        while state["step"] < total_steps:
            started = time.perf_counter()
            epoch, position = divmod(state["step"], per_epoch)
            step_rows = [rows[i] for i in epoch_batches(len(rows), global_batch, cfg.seed, epoch)[position]]
            mine, weight = dist.shard(step_rows)
            batch = {k: v.to(device) for k, v in pair_batch(mine, pad_id, policy.is_encoder_decoder).items()}
            with autocast():
                loss, stats = dpo_batch(policy, batch, cfg.beta, dist, len(step_rows), weight)
            step = state["step"] + 1
            if not math.isfinite(stats["loss"]):
                kept = checkpoints.checkpoint_dirs(out)
                raise UserError(f"the DPO loss became {stats['loss']} at step {step}; stopped. Last complete checkpoint: "
                                f"{kept[-1] if kept else 'none'}. Try a lower --lr (now {cfg.learning_rate:g})")
            dist.backward(loss)
            dist.step(policy.model, optimizer, MAX_GRAD_NORM)
            scheduler.step()
            seconds = time.perf_counter() - started
            record = {"step": step, "epoch": round(step / per_epoch, 4), **stats,
                      "lr": scheduler.get_last_lr()[0], "pairs_per_second": len(step_rows) / seconds,
                      "memory_bytes": peak_memory_bytes(device)}
            log(record)
            summary = {"reward_margin": stats["reward_margin"], "reward_accuracy": stats["reward_accuracy"]}
            state.update(step=step, last_loss=record["loss"], train_seconds=state["train_seconds"] + seconds,
                         history=state["history"] + [summary])
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                checkpoints.save(out, step, policy.model, loaded.tokenizer, cfg.is_adapter, optimizer, scheduler, state, dist=dist)
            bar.update(task, completed=step, description=f"dpo, loss {record['loss']:.4f}, margin {stats['reward_margin']:.3f}")
    return state


def _print_summary(metrics: dict, weights_dir: Path) -> None:
    rows = [
        (f"reward margin ({metrics['reward_on']})", f"{metrics['reward_margin']:.4f}"),
        (f"reward accuracy ({metrics['reward_on']})", f"{metrics['reward_accuracy']:.3f}"),
        ("reward margin, first step", f"{metrics['reward_margin_first_step']:.4f}"),
        ("train loss (last step)", f"{metrics['train_loss']:.4f}"),
        ("eval loss", "-" if metrics["eval_loss"] is None else f"{metrics['eval_loss']:.4f}"),
        ("trainable parameters", f"{metrics['trainable_params']:,} of {metrics['total_params']:,} ({metrics['trainable_share']:.2%})"),
        ("peak memory", f"{metrics['peak_memory_bytes'] / 2**20:,.0f} MiB"),
        ("wall time", f"{metrics['wall_time_s']:.1f} s"),
        ("size on disk", f"{metrics['size_on_disk_bytes'] / 2**20:,.2f} MiB ({weights_dir})"),
    ]
    print_table(f"dpo ({metrics['tune']})", ["", "value"], rows)
