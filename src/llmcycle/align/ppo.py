"""PPO with a KL penalty to the reference model, for encoder-decoder and decoder-only policies.

Written here because current trl has no PPO, and no maintained tool runs RL on encoder-decoder models such as
FLAN-T5. One step, as in Ziegler et al. (2019) and the InstructGPT recipe:

1. rollout: sample a response for each prompt of the batch from the policy;
2. score: the reward of each (prompt, response);
3. per-token reward: -kl_coef * (log pi(a_t) - log pi_ref(a_t)), plus the score on the last token;
4. advantages by GAE (gamma, lam) from a value head on the policy's last hidden state, whitened;
5. `ppo_epochs` passes over minibatches: clipped policy loss, clipped value loss;
6. with `target_kl`, kl_coef adapts so the KL to the reference tracks the target.

With LoRA the reference is the same base with the adapter disabled, so there is no second copy; with full
fine-tuning it is a frozen copy. Dropout is off throughout, so log-probabilities of rollouts and updates match.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..console import note, print_table, progress
from ..data import load_examples, load_template
from ..errors import UserError
from ..train.finetune import check_out_dir, close_run_folder, main_log, open_run_folder, peak_memory_bytes, save_final
from ..models import LoadedModel, chat_renderer, load_base, locate, pick_device, resolve_dtype
from ..train import checkpoints, distributed
from ..train.distributed import Distributed, DistributedSettings
from ..train.methods import count_parameters, lora_config
from ..train.sft_data import accepts_logits_to_keep, epoch_batches
from .reward_sources import Reward

VALUE_HEAD = "value_head.safetensors"


@dataclass
class PPOConfig(DistributedSettings):
    """A PPO run; saved as DIR/config.yaml."""

    model: str = ""
    """Policy to start from (and the reference it is kept close to)."""
    reward: list[str] = field(default_factory=list)
    """Reward terms: rm=DIR, toxicity, word=WORD, each optionally :WEIGHT; they add up."""
    data: str = ""
    """Prompts (rows with a prompt; completions are ignored)."""
    out: str = ""
    """Run folder to write."""
    method: str = "ppo"
    """ppo."""
    tune: str = "lora"
    """lora (the reference is the base with the adapter disabled) or full (a frozen copy is the reference)."""
    max_steps: int = 20
    """PPO steps (each: one batch of rollouts, then ppo_epochs of updates)."""
    batch_size: int = 16
    """Rollouts per step."""
    mini_batch_size: int = 4
    """Rollouts per gradient update."""
    ppo_epochs: int = 4
    """Passes over each step's rollouts."""
    lr: float | None = None
    """Learning rate (default 1e-4 with LoRA, 1.41e-5 full)."""
    kl_coef: float = 0.2
    """Weight of the per-token KL penalty to the reference."""
    target_kl: float | None = None
    """If set, adapt kl_coef so the KL per sequence tracks this value."""
    kl_horizon: int = 10000
    """Horizon of the adaptive KL controller, in rollouts."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """Policy ratio clipping."""
    clip_range_value: float = 0.2
    """Value clipping around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    reward_norm: str = "none"
    """Scores as they are (none), whitened per batch (whiten), or normalised by running mean and std (running)."""
    max_new_tokens: int = 32
    """Longest response."""
    temperature: float = 1.0
    """Sampling temperature of rollouts."""
    top_k: int = 0
    """Top-k of rollouts (0 = no limit: plain sampling, as PPO assumes)."""
    top_p: float = 1.0
    """Nucleus sampling of rollouts."""
    max_prompt_length: int = 256
    """Prompts are cut to their last N tokens."""
    lora_rank: int = 8
    """LoRA rank (tune: lora)."""
    lora_alpha: float = 16.0
    """LoRA alpha."""
    lora_targets: str = "attention"
    """LoRA targets: attention, all-linear or names."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    dtype: str = "auto"
    """auto (float32), float32, bfloat16 or float16 weights."""
    save_every: int | None = None
    """Write a checkpoint every N steps."""
    template: str | None = None
    """YAML template mapping row fields to the prompt."""
    split: str | None = None
    """Split of a hub dataset."""
    skip_bad_rows: bool = False
    """Skip unusable rows."""
    trust_remote_code: bool = False
    """Allow code shipped with a hub model to run."""

    def validate(self) -> None:
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise UserError(f"--{name} is required")
        if self.tune not in ("lora", "full"):
            raise UserError(f"--tune must be lora or full (got {self.tune!r})")
        if self.reward_norm not in ("none", "whiten", "running"):
            raise UserError("--reward-norm must be none, whiten or running")
        counts = {"max_steps": self.max_steps, "batch_size": self.batch_size, "mini_batch_size": self.mini_batch_size,
                  "ppo_epochs": self.ppo_epochs, "max_new_tokens": self.max_new_tokens, "lora_rank": self.lora_rank,
                  "max_prompt_length": self.max_prompt_length, **({"save_every": self.save_every} if self.save_every is not None else {})}
        for name, value in counts.items():
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.mini_batch_size > self.batch_size:
            raise UserError("--mini-batch-size cannot exceed --batch-size")
        if self.kl_coef < 0 or (self.target_kl is not None and self.target_kl <= 0):
            raise UserError("--kl-coef must be 0 or more and --target-kl above 0")
        if not (0 < self.clip_range and 0 < self.clip_range_value and 0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise UserError("--clip-range and --clip-range-value must be above 0; --gamma and --lam in [0, 1]")
        if self.lr is not None and not self.lr > 0 or self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise UserError("--lr and --temperature must be above 0, --top-p in (0, 1]")
        self.validate_distributed()

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.tune == "lora" else 1.41e-5)


@dataclass
class Rollout:
    """A batch of sampled responses, as tensors laid out for scoring them under any model.

    Decoder-only: `input_ids` (batch, P + R) holds the left-padded prompt then the right-padded response;
    encoder-decoder: `input_ids` (batch, P) is the prompt and `decoder_input_ids` (batch, R) the response
    shifted right. `response` (batch, R) are the sampled tokens; `mask` (batch, R) marks real ones.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response: torch.Tensor
    mask: torch.Tensor
    decoder_input_ids: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> "Rollout":
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return Rollout(*(pick(getattr(self, name)) for name in self.__dataclass_fields__))

    def tensors(self) -> dict[str, torch.Tensor | None]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# ---------------------------------------------------------------- rollouts


@torch.no_grad()
def sample(policy, loaded: LoadedModel, prompts: list[str], cfg: PPOConfig) -> Rollout:
    """One sampled response per prompt; `policy` is anything with the policy's `generate` (the actor-critic)."""
    tokenizer, device = loaded.tokenizer, loaded.device
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=cfg.max_prompt_length).to(device)
    generation_config = copy.deepcopy(loaded.model.generation_config)
    generation_config.update(do_sample=True, max_new_tokens=cfg.max_new_tokens, max_length=None, temperature=cfg.temperature,
                             top_k=cfg.top_k, top_p=cfg.top_p, num_beams=1, pad_token_id=tokenizer.pad_token_id)
    output = policy.generate(**encoded, generation_config=generation_config)
    if loaded.is_encoder_decoder:
        start, response = output[:, :1], output[:, 1:]
    else:
        response = output[:, encoded["input_ids"].shape[1] :]
    mask = response_mask(response, tokenizer.eos_token_id)
    response = response.masked_fill(mask == 0, tokenizer.pad_token_id)
    if loaded.is_encoder_decoder:
        decoder_input_ids = torch.cat([start, response[:, :-1]], dim=1)
        return Rollout(encoded["input_ids"], encoded["attention_mask"], response, mask, decoder_input_ids=decoder_input_ids)
    attention = torch.cat([encoded["attention_mask"], mask], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    return Rollout(torch.cat([encoded["input_ids"], response], dim=1), attention, response, mask, position_ids=positions)


def response_mask(response: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it."""
    if eos_id is None:
        return torch.ones_like(response)
    is_eos = (response == eos_id).int()
    after_first_eos = (is_eos.cumsum(dim=1) - is_eos) > 0
    return (~after_first_eos).long()


def score_tokens(model, rollout: Rollout, value_head=None):
    """Log-probabilities (batch, R) of the response tokens, and values (batch, R) and entropy if asked."""
    want_hidden = value_head is not None
    if rollout.decoder_input_ids is not None:
        outputs = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                        decoder_input_ids=rollout.decoder_input_ids, output_hidden_states=want_hidden, use_cache=False)
        logits = outputs.logits
        hidden = outputs.decoder_hidden_states[-1] if want_hidden else None
    else:
        width = rollout.response.shape[1]
        start = rollout.input_ids.shape[1] - width - 1  # the last prompt position predicts the first response token
        # Logits only where they are used: the output head skips the prompt positions.
        keep = {"logits_to_keep": width + 1} if accepts_logits_to_keep(model) else {}
        outputs = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                        position_ids=rollout.position_ids, output_hidden_states=want_hidden, use_cache=False, **keep)
        logits = outputs.logits[:, -(width + 1) : -1]  # (batch, R, vocab)
        hidden = outputs.hidden_states[-1][:, start : start + width] if want_hidden else None
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (batch, R, vocab)
    chosen = log_probs.gather(-1, rollout.response.unsqueeze(-1)).squeeze(-1)
    if not want_hidden:
        return chosen, None, None
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    values = value_head(hidden.float()).squeeze(-1)
    return chosen, values, entropy


# ---------------------------------------------------------------- advantages


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, dist: Distributed | None = None) -> torch.Tensor:
    """Zero mean and unit variance over the real tokens of the whole step (on every process)."""
    dist = dist or Distributed()
    total, count = dist.sum(float((values * mask).sum()), float(mask.sum()))
    mean = total / max(count, 1)
    (squares,) = dist.sum(float((((values - mean) ** 2) * mask).sum()))
    return (values - mean) * torch.rsqrt(torch.tensor(squares / max(count, 1) + 1e-8)) * mask


def token_rewards(scores: torch.Tensor, log_probs, ref_log_probs, mask, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, R) rewards: the KL penalty on every token, the score added on each row's last token; and the KL."""
    kl = (log_probs - ref_log_probs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(dim=1).long().clamp(min=1) - 1  # (batch,) index of each row's last token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns, (batch, R) each; positions past a row's end are 0."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


class AdaptiveKL:
    """Ziegler et al.'s controller: kl_coef grows when the KL is above target and shrinks below it."""

    def __init__(self, coef: float, target: float | None, horizon: int):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, rollouts: int) -> None:
        if self.target is None:
            return
        error = float(np.clip(kl / self.target - 1, -0.2, 0.2))
        self.coef *= 1 + error * rollouts / self.horizon


class RunningMoments:
    """Running mean and std of scores, for reward_norm=running."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        for value in scores:
            self.count += 1
            delta = value - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (value - self.mean)
        std = math.sqrt(self.m2 / max(self.count - 1, 1)) or 1.0
        return (scores - self.mean) / std


# ---------------------------------------------------------------- the run


class ActorCritic(torch.nn.Module):
    """The policy and its value head as one module, so DDP and FSDP keep both in step across processes."""

    def __init__(self, policy: torch.nn.Module, value_head: torch.nn.Module):
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(self, with_values: bool = True, **rollout: torch.Tensor | None):
        return score_tokens(self.policy, Rollout(**rollout), self.value_head if with_values else None)

    # Under FSDP these two are registered as forward methods: the weights are gathered around them too.

    def generate(self, **kwargs) -> torch.Tensor:
        return self.policy.generate(**kwargs)

    def reference_log_probs(self, **rollout: torch.Tensor | None) -> torch.Tensor:
        """LoRA: the policy with its adapter disabled is the reference."""
        with self.policy.disable_adapter():
            return score_tokens(self.policy, Rollout(**rollout))[0]


@dataclass
class Actors:
    """The trained policy with its value head, and how to score under the reference."""

    model: torch.nn.Module
    """The ActorCritic, or the DDP wrapper around it: what trains."""
    inner: ActorCritic
    reference: torch.nn.Module | None
    """A frozen copy (full); None with LoRA, where the reference is the policy with its adapter disabled."""
    dist: Distributed

    @property
    def policy(self) -> torch.nn.Module:
        return self.inner.policy

    def score(self, rollout: Rollout, with_values: bool = True):
        return self.model(with_values=with_values, **rollout.tensors())

    def reference_log_probs(self, rollout: Rollout) -> torch.Tensor:
        if self.reference is not None:
            return score_tokens(self.reference, rollout)[0]
        return self.inner.reference_log_probs(**rollout.tensors())

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def build_actors(loaded: LoadedModel, cfg: PPOConfig, dist: Distributed, resume_from: Path | None) -> Actors:
    import peft

    hidden = loaded.model.get_output_embeddings().in_features
    value_head = torch.nn.Linear(hidden, 1).to(loaded.device)
    torch.nn.init.normal_(value_head.weight, std=1 / math.sqrt(hidden + 1))
    torch.nn.init.zeros_(value_head.bias)
    reference = None
    if cfg.tune == "full":
        reference = copy.deepcopy(loaded.model).eval().requires_grad_(False)
        policy = loaded.model.eval()
    else:
        lora = lora_config(loaded.model, loaded.is_encoder_decoder, cfg.lora_rank, cfg.lora_alpha, 0.0, cfg.lora_targets)
        policy = peft.get_peft_model(loaded.model, lora).eval()
    if resume_from is not None:  # into the whole model, before any sharding
        checkpoints.load_weights(resume_from, policy, cfg.tune == "lora")
        _load_value_head(value_head, resume_from)
    inner = ActorCritic(policy, value_head).eval()
    return Actors(dist.wrap(inner, forward_methods=("generate", "reference_log_probs")), inner, reference, dist)


def load_policy(cfg: PPOConfig) -> LoadedModel:
    source = locate(cfg.model)
    if source.adapters:
        raise UserError(f"{cfg.model} is an adapter; merge it first (llmcycle merge) to use it as a PPO policy")
    base = str(Path(source.base).resolve()) if Path(source.base).exists() else source.base
    dtype = torch.float32 if cfg.dtype == "auto" else resolve_dtype(cfg.dtype, pick_device())
    loaded = load_base(base, torch_dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    loaded.model.to(pick_device())
    if not hasattr(loaded.model, "generate"):
        raise UserError(f"{cfg.model} cannot generate, so it cannot be a policy")
    return loaded


def load_prompts(cfg: PPOConfig, loaded: LoadedModel) -> list[str]:
    template = load_template(cfg.template) if cfg.template else None
    examples = load_examples(cfg.data, split=cfg.split, template=template, chat=chat_renderer(loaded.tokenizer),
                             seed=cfg.seed, skip_bad_rows=cfg.skip_bad_rows).examples
    return [example.prompt for example in examples]


def ppo_step(actors: Actors, rollout: Rollout, scores: torch.Tensor, cfg: PPOConfig, kl_coef: float, optimizer) -> dict:
    """Score the rollouts, then `ppo_epochs` of clipped updates over minibatches; returns the step's statistics.

    On several processes each scores and updates on its own rollouts (every process has as many) and DDP or
    FSDP averages the gradients; advantages are whitened and statistics averaged over all processes.
    """
    dist = actors.dist
    with torch.no_grad():
        old_log_probs, old_values, _ = actors.score(rollout)
        ref_log_probs = actors.reference_log_probs(rollout)
        rewards, kl = token_rewards(scores, old_log_probs, ref_log_probs, rollout.mask.float(), kl_coef)
        advantages, returns = gae(rewards, old_values, rollout.mask.float(), cfg.gamma, cfg.lam)
        advantages = whiten(advantages, rollout.mask.float(), dist)
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
    updates = 0
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(len(scores), generator=generator)
        for start in range(0, len(order), cfg.mini_batch_size):
            rows = order[start : start + cfg.mini_batch_size].to(rollout.response.device)
            part = rollout.select(rows)
            mask = part.mask.float()
            log_probs, values, entropy = actors.score(part)
            ratio = torch.exp(log_probs - old_log_probs[rows])
            unclipped = -advantages[rows] * ratio
            clipped = -advantages[rows] * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
            policy_loss = masked_mean(torch.maximum(unclipped, clipped), mask)
            values_clipped = old_values[rows] + (values - old_values[rows]).clamp(-cfg.clip_range_value, cfg.clip_range_value)
            value_loss = 0.5 * masked_mean(torch.maximum((values - returns[rows]) ** 2, (values_clipped - returns[rows]) ** 2), mask)
            loss = policy_loss + cfg.vf_coef * value_loss
            dist.backward(loss)
            dist.step(actors.model, optimizer, cfg.max_grad_norm)
            updates += 1
            totals["policy_loss"] += policy_loss.item()
            totals["value_loss"] += value_loss.item()
            totals["clip_fraction"] += masked_mean((clipped > unclipped).float(), mask).item()
            totals["entropy"] += masked_mean(entropy.detach(), mask).item()
    totals["kl"] = kl.sum(dim=1).mean().item() * updates  # per sequence, summed over its tokens
    return {name: value / (updates * dist.world_size) for name, value in zip(totals, dist.sum(*totals.values()))}


def ppo(cfg: PPOConfig, resume: bool = False) -> dict:
    """Run PPO; writes DIR/adapter or DIR/model, value_head.safetensors, config.yaml, log.jsonl, metrics.json."""
    cfg.validate()
    return distributed.run(["align", "--method", "ppo"], cfg, resume, _ppo, check_out_dir)


def _ppo(cfg: PPOConfig, resume: bool, dist: Distributed) -> dict:
    out = Path(cfg.out)
    resume_from = check_out_dir(cfg, out, resume)
    dist.barrier()  # every process has looked at --out before the main one writes there
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    reward = Reward(cfg.reward)
    loaded = load_policy(cfg)
    prompts = load_prompts(cfg, loaded)
    if dist.enabled and len(prompts) < cfg.batch_size * dist.world_size:
        raise UserError(f"{cfg.data}: {len(prompts)} prompt{'s' if len(prompts) != 1 else ''}; {dist.world_size} processes "
                        f"with --batch-size {cfg.batch_size} need at least {cfg.batch_size * dist.world_size}")
    actors = build_actors(loaded, cfg, dist, resume_from)
    trainable, total = count_parameters(actors.policy)  # FSDP's sharded parameters report their whole size
    if dist.enabled:
        torch.manual_seed(cfg.seed + dist.rank)  # same initial weights everywhere, different samples per process
    optimizer = torch.optim.AdamW(actors.parameters(), lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # constant; kept for checkpoint symmetry
    actors.model, optimizer = dist.prepare_optimizer(actors.model, optimizer)
    note(f"ppo ({cfg.tune}) on {loaded.kind} {Path(loaded.name).name}: {trainable:,} trainable of {total:,} parameters; "
         f"{len(prompts)} prompts, {cfg.max_steps} steps of {cfg.batch_size * dist.world_size} rollouts"
         + (f", {dist.describe()}" if dist.enabled else ""))

    state = {"step": 0, "kl_coef": cfg.kl_coef, "running": [0, 0.0, 0.0], "history": [], "seconds": 0.0}
    state = open_run_folder(cfg, out, state, resume_from, optimizer, scheduler, dist, actors.model)
    is_adapter = cfg.tune == "lora"
    state = _loop(cfg, actors, loaded, prompts, reward, optimizer, scheduler, state, out, is_adapter)
    weights = _save_final(out, actors, loaded.tokenizer, is_adapter)
    history = state["history"]
    metrics = {
        "method": "ppo",
        "tune": cfg.tune,
        "steps": state["step"],
        "world_size": dist.world_size,
        "reward_first": history[0]["reward"],
        "reward_last": history[-1]["reward"],
        "reward_mean_last_quarter": float(np.mean([h["reward"] for h in history[-max(1, len(history) // 4):]])),
        "kl_last": history[-1]["kl"],
        "kl_coef_final": state["kl_coef"],
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total,
        "peak_memory_bytes": peak_memory_bytes(loaded.device),
        "wall_time_s": state["seconds"],
    }
    return close_run_folder(out, metrics, weights, dist, _print_summary)


def _print_summary(metrics: dict) -> None:
    trainable, total = metrics["trainable_params"], metrics["total_params"]
    print_table("ppo", ["", "value"], [
        ("mean reward, first step -> last", f"{metrics['reward_first']:.4f} -> {metrics['reward_last']:.4f}"),
        ("KL to reference (last step)", f"{metrics['kl_last']:.4f}"),
        ("kl_coef (final)", f"{metrics['kl_coef_final']:.4f}"),
        ("trainable parameters", f"{trainable:,} of {total:,} ({trainable / total:.2%})"),
        ("wall time", f"{metrics['wall_time_s']:.1f} s"),
    ])


def _loop(cfg, actors: Actors, loaded, prompts, reward, optimizer, scheduler, state, out: Path, is_adapter: bool) -> dict:
    dist = actors.dist
    controller = AdaptiveKL(state["kl_coef"], cfg.target_kl, cfg.kl_horizon)
    moments = RunningMoments()
    moments.count, moments.mean, moments.m2 = state["running"]
    global_batch = cfg.batch_size * dist.world_size
    # On several processes every step has full batches (each process must make as many updates); one process
    # keeps the short last batch of an epoch, as before.
    per_epoch = len(prompts) // global_batch if dist.enabled else math.ceil(len(prompts) / global_batch)
    with progress() as bar, main_log(out, dist) as log:
        task = bar.add_task("ppo", total=cfg.max_steps, completed=state["step"])
        while state["step"] < cfg.max_steps:
            started = time.perf_counter()
            epoch, position = divmod(state["step"], per_epoch)
            step_prompts = [prompts[i] for i in epoch_batches(len(prompts), global_batch, cfg.seed, epoch)[position]]
            batch_prompts = dist.shard(step_prompts)[0]
            rollout = sample(actors.inner, loaded, batch_prompts, cfg)
            texts = loaded.tokenizer.batch_decode(rollout.response, skip_special_tokens=True)
            raw = np.asarray(reward(batch_prompts, [t.strip() for t in texts]), dtype=np.float64)
            every_raw = np.concatenate([np.asarray(part) for part in dist.gather_objects(raw)])  # rank order
            scores = _normalise(every_raw, cfg.reward_norm, moments).reshape(dist.world_size, -1)[dist.rank]
            stats = ppo_step(actors, rollout, torch.tensor(scores, dtype=torch.float32, device=loaded.device), cfg, controller.coef, optimizer)
            controller.update(stats["kl"], len(step_prompts))
            seconds = time.perf_counter() - started
            step = state["step"] + 1
            (response_tokens,) = dist.sum(float(rollout.mask.sum()))
            record = {"step": step, "reward": float(every_raw.mean()), "reward_std": float(every_raw.std()), **stats,
                      "kl_coef": controller.coef, "response_tokens": int(response_tokens),
                      "tokens_per_second": response_tokens / seconds}
            log(record)
            if not math.isfinite(stats["policy_loss"] + stats["value_loss"]):
                raise UserError(f"the PPO loss became non-finite at step {step}; try a lower --lr (now {cfg.learning_rate:g})")
            state.update(step=step, kl_coef=controller.coef, running=[moments.count, moments.mean, moments.m2],
                         seconds=state["seconds"] + seconds, history=state["history"] + [{"reward": record["reward"], "kl": record["kl"]}])
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                checkpoints.save(out, step, actors.model, loaded.tokenizer, is_adapter, optimizer, scheduler, state,
                                 extra=_value_head_file, dist=dist, within="policy")
            bar.update(task, completed=step, description=f"ppo, reward {record['reward']:.3f}, kl {record['kl']:.3f}")
    return state


def _normalise(scores: np.ndarray, how: str, moments: RunningMoments) -> np.ndarray:
    if how == "whiten":
        return (scores - scores.mean()) / (scores.std() + 1e-8)
    if how == "running":
        return moments.normalise(scores)
    return scores


def _load_value_head(value_head, folder: Path) -> None:
    from safetensors.torch import load_file

    value_head.load_state_dict(load_file(folder / VALUE_HEAD))


def _value_head_file(model: torch.nn.Module, full_state: dict | None) -> dict[str, dict[str, torch.Tensor]]:
    """value_head.safetensors from the unwrapped actor-critic, or from its gathered full state dict (FSDP)."""
    if full_state is None:
        tensors = model.value_head.state_dict()
    else:
        tensors = {name.removeprefix("value_head."): value for name, value in full_state.items() if name.startswith("value_head.")}
    return {VALUE_HEAD: tensors}


def _save_final(out: Path, actors: Actors, tokenizer, is_adapter: bool) -> Path:
    return save_final(out, actors.model, tokenizer, is_adapter, actors.dist, within="policy", extra=_value_head_file)
