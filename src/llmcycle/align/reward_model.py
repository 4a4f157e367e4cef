"""Reward models: a scalar score for (prompt, response), learnt from human preferences.

The InstructGPT recipe: a pretrained backbone with a one-output head (`AutoModelForSequenceClassification`,
num_labels=1) reads prompt and response as a text pair and is trained on pairs (chosen, rejected) with the
Bradley-Terry loss

    loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected))

so the score difference models the log-odds that labellers prefer the chosen response. Rankings of several
responses are expanded into every ordered pair by `data.preferences.load_pairs`. Any encoder (BERT, RoBERTa,
MiniLM) or decoder (GPT-2, Llama) backbone works; encoder-decoder ones work where transformers has a
sequence-classification head for them and their tokenizer marks text pairs with EOS (T5 and BART pool the
last EOS token). Every weight trains. Pairs are read through `rewards.reward_inputs`, the same function PPO
scores with, so training and scoring see the same tokens.

Our own loop (as in finetune.py) rather than trl's RewardTrainer: it gives the run contract as it is, namely a
folder that appears complete or not at all, checkpoints that resume to the same weights, and one data order
for every backbone.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..console import note, print_table, progress
from ..data.preferences import Pair, load_pairs
from ..errors import UserError
from ..train.finetune import check_out_dir, close_run_folder, main_log, open_run_folder, peak_memory_bytes, save_final
from ..models import context_window, load_tokenizer, locate, pick_device, resolve_dtype
from ..evaluate.stats import Statistic, bootstrap_summary, mean_of_first
from ..train import checkpoints, distributed
from ..train.distributed import Distributed, DistributedSettings
from ..train.methods import count_parameters
from ..train.sft_data import epoch_batches
from .reward_sources import reward_inputs

MAX_GRAD_NORM = 1.0
"""Gradient clipping, as in the Hugging Face Trainer's default."""


@dataclass
class RewardConfig(DistributedSettings):
    """A reward-model run; saved as DIR/config.yaml."""

    model: str = ""
    """Backbone: any encoder or decoder (minilm is the bundled all-MiniLM-L6-v2), a folder or a hub id."""
    data: str = ""
    """Preference rows: prompt/chosen/rejected, or prompt/responses/ranking (1 = best)."""
    eval_data: str | None = None
    """Held-out preference rows for the pairwise accuracy (default: the training pairs)."""
    out: str = ""
    """Run folder to write."""
    epochs: int = 1
    """Passes over the training pairs (unless max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides epochs."""
    lr: float = 2e-5
    """Peak learning rate (every weight trains)."""
    batch_size: int = 8
    """Pairs per step (each pair is two forward rows)."""
    max_length: int = 512
    """Longest tokenised prompt + response; longer ones are cut (the longer side first)."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warm-up, then linear decay to 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 0
    """Seed for the head's initialisation, pair order and dropout."""
    dtype: str = "auto"
    """auto: float32 weights, with bfloat16 autocast on a GPU; or float32, bfloat16, float16 weights."""
    eval_every: int | None = None
    """Score the eval pairs every N steps (and always at the end)."""
    save_every: int | None = None
    """Write a checkpoint every N steps."""
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
        counts = {"epochs": self.epochs, "batch_size": self.batch_size,
                  **{k: v for k, v in (("max_steps", self.max_steps), ("eval_every", self.eval_every),
                                       ("save_every", self.save_every)) if v is not None}}
        for name, value in counts.items():
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.max_length < 2:
            raise UserError("--max-length must be at least 2")
        if not self.lr > 0:
            raise UserError(f"--lr must be above 0 (got {self.lr})")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise UserError("--warmup-steps and --weight-decay must be 0 or more")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError("--dtype must be auto, float32, bfloat16 or float16")
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
                        f"encoders such as BERT and decoders such as GPT-2 have it): {reason}") from None
    model.config.problem_type = "regression"  # one real-valued output
    set_pad_token(model, tokenizer)
    return model.to(device), tokenizer


def set_pad_token(model, tokenizer) -> None:
    """Decoder backbones (GPT-2, Llama) pool the last non-pad token, so the model must know the pad id."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        note(f"tokenizer has no pad token; padding with {tokenizer.pad_token!r}")
    model.config.pad_token_id = tokenizer.pad_token_id


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
        reason = " ".join(str(exc).split())[:200]
        if "<eos>" in reason.lower():  # T5 and BART pool the last EOS token of the pair
            reason += " (its tokenizer must end both sides of a text pair with EOS, as T5's and BART's own tokenizers do)"
        raise UserError(f"{name} cannot score (prompt, response) pairs as a reward model: {reason}") from None


def _autocast(cfg: RewardConfig, device):
    if device.type == "cuda" and cfg.dtype == "auto":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return contextlib.nullcontext


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
    cfg.validate()
    return distributed.run(["reward"], cfg, resume, _train_reward, check_out_dir)


def _train_reward(cfg: RewardConfig, resume: bool, dist: Distributed) -> dict:
    out = Path(cfg.out)
    resume_from = check_out_dir(cfg, out, resume)
    dist.barrier()  # every process has looked at --out before the main one writes there
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model, tokenizer = load_backbone(cfg)
    device = next(model.parameters()).device
    max_length = effective_max_length(cfg, model, tokenizer)
    train_pairs = load_usable_pairs(cfg, cfg.data, tokenizer, max_length)
    eval_pairs = load_usable_pairs(cfg, cfg.eval_data, tokenizer, max_length) if cfg.eval_data else []
    model.eval()
    probe(model, tokenizer, train_pairs, max_length, cfg.model)
    if resume_from is not None:
        checkpoints.load_weights(resume_from, model, False)
    model.train()
    trainable, total = count_parameters(model)
    model = dist.wrap(model)
    if dist.enabled:
        torch.manual_seed(cfg.seed + dist.rank)  # same initial weights everywhere, different dropout per process
    per_epoch = math.ceil(len(train_pairs) / (cfg.batch_size * dist.world_size))
    total_steps = cfg.max_steps or per_epoch * cfg.epochs
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    model, optimizer = dist.prepare_optimizer(model, optimizer)
    autocast = _autocast(cfg, device)
    note(f"reward model on {dist.unwrap(model).config.model_type} {Path(cfg.model).name}: {trainable:,} parameters; "
         f"{len(train_pairs)} pairs, {total_steps} steps of {cfg.batch_size * dist.world_size}, {device.type}"
         + (f", {dist.describe()}" if dist.enabled else ""))

    state = {"step": 0, "train_seconds": 0.0, "last_loss": None, "last_accuracy": None}
    state = open_run_folder(cfg, out, state, resume_from, optimizer, scheduler, dist, model)
    state = _loop(cfg, model, tokenizer, train_pairs, eval_pairs, optimizer, scheduler, state, per_epoch, total_steps,
                  max_length, autocast, out, dist)

    scored_on = "eval" if eval_pairs else "train"
    final = pair_metrics(*score_all(model, tokenizer, eval_pairs or train_pairs, cfg, max_length, autocast, dist))
    weights_dir = save_final(out, model, tokenizer, False, dist)
    metrics = {
        "method": "reward",
        "pairwise_accuracy": final["pairwise_accuracy"],
        "pairwise_accuracy_on": scored_on,
        "eval_loss": final["loss"],
        "mean_margin": final["mean_margin"],
        "train_loss": state["last_loss"],
        "train_accuracy": state["last_accuracy"],
        "pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "steps": state["step"],
        "world_size": dist.world_size,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total,
        "peak_memory_bytes": peak_memory_bytes(device),
        "wall_time_s": state["train_seconds"],
    }
    return close_run_folder(out, metrics, weights_dir, dist, lambda m: _print_summary(m, weights_dir))


def make_optimizer(model, cfg: RewardConfig, total_steps: int):
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    return optimizer, scheduler


def _loop(cfg, model, tokenizer, train_pairs, eval_pairs, optimizer, scheduler, state, per_epoch, total_steps, max_length,
          autocast, out: Path, dist: Distributed) -> dict:
    device = next(model.parameters()).device
    global_batch = cfg.batch_size * dist.world_size
    with progress() as bar, main_log(out, dist) as log:
        task = bar.add_task("reward model", total=total_steps, completed=state["step"])
        while state["step"] < total_steps:
            started = time.perf_counter()
            epoch, position = divmod(state["step"], per_epoch)
            step_pairs = [train_pairs[i] for i in epoch_batches(len(train_pairs), global_batch, cfg.seed, epoch)[position]]
            batch, weight = dist.shard(step_pairs)
            with autocast():
                chosen, rejected = pair_scores(model, tokenizer, batch, max_length)
            losses = bradley_terry_loss(chosen, rejected)
            margin = (chosen - rejected).detach()
            loss_sum, correct, margin_sum = dist.sum(losses.sum().item() * weight, (margin > 0).sum().item() * weight,
                                                     margin.sum().item() * weight)
            step, loss = state["step"] + 1, loss_sum / len(step_pairs)
            if not math.isfinite(loss):
                kept = checkpoints.checkpoint_dirs(out)
                raise UserError(f"the loss became {loss} at step {step}; stopped. Last complete checkpoint: "
                                f"{kept[-1] if kept else 'none'}. Try a lower --lr (now {cfg.lr:g})")
            dist.backward(losses.sum() * (dist.loss_scale(len(step_pairs)) * weight))
            dist.step(model, optimizer, MAX_GRAD_NORM)
            scheduler.step()
            seconds = time.perf_counter() - started
            record = {"step": step, "epoch": round(step / per_epoch, 4), "loss": loss,
                      "accuracy": correct / len(step_pairs), "margin": margin_sum / len(step_pairs),
                      "lr": scheduler.get_last_lr()[0], "pairs_per_second": len(step_pairs) / seconds,
                      "memory_bytes": peak_memory_bytes(device)}
            if eval_pairs and cfg.eval_every and step % cfg.eval_every == 0:
                scored = pair_metrics(*score_all(model, tokenizer, eval_pairs, cfg, max_length, autocast, dist))
                record.update(eval_loss=scored["loss"], eval_accuracy=scored["pairwise_accuracy"]["mean"],
                              eval_margin=scored["mean_margin"])
            log(record)
            state.update(step=step, last_loss=record["loss"], last_accuracy=record["accuracy"],
                         train_seconds=state["train_seconds"] + seconds)
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                checkpoints.save(out, step, model, tokenizer, False, optimizer, scheduler, state, dist=dist)
            bar.update(task, completed=step, description=f"reward model, loss {record['loss']:.4f}")
    return state


def _print_summary(metrics: dict, weights_dir: Path) -> None:
    accuracy = metrics["pairwise_accuracy"]
    rows = [
        (f"pairwise accuracy ({metrics['pairwise_accuracy_on']}, {accuracy['n']} pairs)",
         f"{accuracy['mean']:.3f} [{accuracy['ci95'][0]:.3f}, {accuracy['ci95'][1]:.3f}]"),
        ("mean margin (chosen - rejected)", f"{metrics['mean_margin']:.4f}"),
        (f"loss ({metrics['pairwise_accuracy_on']})", f"{metrics['eval_loss']:.4f}"),
        ("train loss (last step)", f"{metrics['train_loss']:.4f}"),
        ("parameters", f"{metrics['trainable_params']:,}"),
        ("peak memory", f"{metrics['peak_memory_bytes'] / 2**20:,.0f} MiB"),
        ("wall time", f"{metrics['wall_time_s']:.1f} s"),
        ("size on disk", f"{metrics['size_on_disk_bytes'] / 2**20:,.2f} MiB ({weights_dir})"),
    ]
    print_table("reward model", ["", "value"], rows)
