"""PPO with a KL penalty to the reference model, for encoder-decoder and decoder-only policies.

Written here because current trl has no PPO, and no maintained tool runs RL on encoder-decoder models such as
FLAN-T5. One step, as in Ziegler et al. (2019) and the InstructGPT recipe:

1. rollout: sample a response for each prompt of the batch from the policy;
2. score: the reward of each (prompt, response);
3. per-token reward: -kl_coef * (log pi(a_t) - log pi_ref(a_t)), plus the score on the last token;
4. advantages by GAE (gamma, lam) from a value head on the policy's last hidden state, whitened;
5. `ppo_epochs` passes over minibatches: clipped policy loss, clipped value loss;
6. with `target_kl`, kl_coef adapts so the KL to the reference tracks the target.

The policy and its reference come from policy.py: a fresh LoRA adapter against the base with the adapter
disabled (no second copy), a full fine-tune against a frozen copy, or an adapter run (the detox lab's LoRA
fine-tune) whose adapter keeps training against itself as it was. Dropout is off throughout, so
log-probabilities of rollouts and updates match.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import above, at_least, check_fields
from ..data import load_examples, load_template
from ..errors import UserError
from ..models import LoadedModel, chat_renderer
from ..train.distributed import Distributed, DistributedSettings
from ..train.run import Optimization, StepResult, Trainer, check_finite, peak_memory_bytes, run_training, summary_table
from ..train.settings import DataSettings, LoRASettings, ModelSettings, PolicyTuning, RunSettings
from ..train.sft_data import accepts_logits_to_keep, epoch_batches
from .policy import Policy, announce, build_policy, load_policy_base
from .reward_sources import Reward

VALUE_HEAD = "value_head.safetensors"


@dataclass
class PPOConfig(LoRASettings, RunSettings, ModelSettings, DataSettings, DistributedSettings):
    """A PPO run; saved as DIR/config.yaml."""

    model: str = ""
    """Policy to start from (a model, or an adapter run whose adapter keeps training); also the reference."""
    reward: list[str] = field(default_factory=list)
    """Reward terms: rm=DIR, toxicity, word=WORD, each optionally :WEIGHT; they add up."""
    data: str = ""
    """Prompts (rows with a prompt; completions are ignored)."""
    out: str = ""
    """Run folder to write."""
    method: Literal["ppo"] = "ppo"
    """ppo."""
    tune: PolicyTuning = "lora"
    """lora (an adapter trains: a new one, or the adapter run's) or full (every weight; a frozen copy is the reference)."""
    max_steps: int = at_least(20, 1)
    """PPO steps (each: one batch of rollouts, then ppo_epochs of updates)."""
    batch_size: int = at_least(16, 1)
    """Rollouts per step."""
    mini_batch_size: int = at_least(4, 1)
    """Rollouts per gradient update."""
    ppo_epochs: int = at_least(4, 1)
    """Passes over each step's rollouts."""
    lr: float | None = above(None, 0)
    """Learning rate (default 1e-4 with LoRA, 1.41e-5 full)."""
    kl_coef: float = at_least(0.2, 0)
    """Weight of the per-token KL penalty to the reference."""
    target_kl: float | None = above(None, 0)
    """If set, adapt kl_coef so the KL per sequence tracks this value."""
    kl_horizon: int = 10000
    """Horizon of the adaptive KL controller, in rollouts."""
    gamma: float = at_least(1.0, 0, max=1)
    """Discount."""
    lam: float = at_least(0.95, 0, max=1)
    """GAE lambda."""
    clip_range: float = above(0.2, 0)
    """Policy ratio clipping."""
    clip_range_value: float = above(0.2, 0)
    """Value clipping around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    reward_norm: Literal["none", "whiten", "running"] = "none"
    """Scores as they are (none), whitened per batch (whiten), or normalised by running mean and std (running)."""
    max_new_tokens: int = at_least(32, 1)
    """Longest response."""
    temperature: float = above(1.0, 0)
    """Sampling temperature of rollouts."""
    top_k: int = at_least(0, 0)
    """Top-k of rollouts (0 = no limit: plain sampling, as PPO assumes)."""
    top_p: float = above(1.0, 0, max=1)
    """Nucleus sampling of rollouts."""
    max_prompt_length: int = at_least(256, 1)
    """Prompts are cut to their last N tokens."""
    template: str | None = None
    """YAML template mapping row fields to the prompt."""
    def validate(self) -> None:
        check_fields(self, required=("model", "data", "out"))
        if self.mini_batch_size > self.batch_size:
            raise UserError("--mini-batch-size cannot exceed --batch-size")
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

    def __init__(self, policy: torch.nn.Module, value_head: torch.nn.Module, switch: Policy | None = None):
        super().__init__()
        self.policy, self.value_head = policy, value_head
        self.switch = switch  # how the policy becomes its reference (adapter disabled, or the reference adapter)

    def forward(self, with_values: bool = True, **rollout: torch.Tensor | None):
        return score_tokens(self.policy, Rollout(**rollout), self.value_head if with_values else None)

    # Under FSDP these two are registered as forward methods: the weights are gathered around them too.

    def generate(self, **kwargs) -> torch.Tensor:
        return self.policy.generate(**kwargs)

    def reference_log_probs(self, **rollout: torch.Tensor | None) -> torch.Tensor:
        """An adapter policy switched to its reference: the adapter disabled, or the frozen reference adapter."""
        with self.switch.reference(self.policy):
            return score_tokens(self.policy, Rollout(**rollout))[0]


@dataclass
class Actors:
    """The trained policy with its value head, and how to score under the reference."""

    model: torch.nn.Module
    """The ActorCritic, or the DDP wrapper around it: what trains."""
    inner: ActorCritic
    reference: torch.nn.Module | None
    """A frozen copy (full); None for an adapter policy, which switches to its reference (policy.py)."""
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


def build_actor_critic(loaded: LoadedModel, cfg: PPOConfig, adapter_dir: str | None = None) -> ActorCritic:
    """The policy and its reference (policy.py), with a new value head on the policy's last hidden state."""
    hidden = loaded.model.get_output_embeddings().in_features
    value_head = torch.nn.Linear(hidden, 1).to(loaded.device)
    torch.nn.init.normal_(value_head.weight, std=1 / math.sqrt(hidden + 1))
    torch.nn.init.zeros_(value_head.bias)
    policy = build_policy(loaded, cfg, adapter_dir)
    return ActorCritic(policy.model, value_head, policy).eval()


def load_prompts(cfg: PPOConfig, loaded: LoadedModel) -> list[str]:
    template = load_template(cfg.template) if cfg.template else None
    examples = load_examples(cfg.data, split=cfg.split, template=template, chat=chat_renderer(loaded.tokenizer),
                             seed=cfg.seed, skip_bad_rows=cfg.skip_bad_rows).examples
    return [example.prompt for example in examples]


def clipped_losses(actors: Actors, part: Rollout, old_log_probs, old_values, advantages, returns, cfg: PPOConfig):
    """(policy loss, value loss, share of clipped ratios, entropy) of one minibatch of rollouts."""
    mask = part.mask.float()
    log_probs, values, entropy = actors.score(part)
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
    policy_loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    values_clipped = old_values + (values - old_values).clamp(-cfg.clip_range_value, cfg.clip_range_value)
    value_loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask).item()
    return policy_loss, value_loss, clip_fraction, masked_mean(entropy.detach(), mask).item()


def ppo_step(actors: Actors, rollout: Rollout, scores: torch.Tensor, cfg: PPOConfig, kl_coef: float, update,
             check_loss=lambda loss: None) -> dict:
    """Score the rollouts, then `ppo_epochs` of clipped updates over minibatches (`update()` clips, applies and
    clears the gradients); returns the step's statistics.

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
            policy_loss, value_loss, clip_fraction, entropy = clipped_losses(
                actors, rollout.select(rows), old_log_probs[rows], old_values[rows], advantages[rows], returns[rows], cfg)
            loss = policy_loss + cfg.vf_coef * value_loss
            check_loss(loss.item())
            dist.backward(loss)
            update()
            updates += 1
            totals["policy_loss"] += policy_loss.item()
            totals["value_loss"] += value_loss.item()
            totals["clip_fraction"] += clip_fraction
            totals["entropy"] += entropy
    totals["kl"] = kl.sum(dim=1).mean().item() * updates  # per sequence, summed over its tokens
    return {name: value / (updates * dist.world_size) for name, value in zip(totals, dist.sum(*totals.values()))}


def ppo(cfg: PPOConfig, resume: bool = False) -> dict:
    """Run PPO; writes DIR/adapter or DIR/model, value_head.safetensors, config.yaml, log.jsonl, metrics.json."""
    return run_training(["align", "--method", "ppo"], cfg, resume, PPOTrainer)


class PPOTrainer(Trainer):
    """Policy, prompts, step and metrics of PPO: each step samples rollouts, scores them, then updates on them."""

    description, save_within = "ppo", "policy"
    forward_methods = ("generate", "reference_log_probs")
    cfg: PPOConfig

    def build(self) -> torch.nn.Module:
        cfg, dist = self.cfg, self.dist
        self.reward = Reward(cfg.reward)
        self.loaded, self.adapter_dir = load_policy_base(cfg, "PPO")
        self.prompts = load_prompts(cfg, self.loaded)
        global_batch = cfg.batch_size * dist.world_size
        if dist.enabled and len(self.prompts) < global_batch:
            raise UserError(f"{cfg.data}: {len(self.prompts)} prompt{'s' if len(self.prompts) != 1 else ''}; {dist.world_size} "
                            f"processes with --batch-size {cfg.batch_size} need at least {global_batch}")
        self.inner = build_actor_critic(self.loaded, cfg, self.adapter_dir)
        self.tokenizer, self.is_adapter = self.loaded.tokenizer, self.inner.switch.is_adapter
        self.total_steps, self.max_grad_norm = cfg.max_steps, cfg.max_grad_norm
        self.save_extra, self.moments = _value_head_file, RunningMoments()
        # On several processes every step has full batches (each process must make as many updates); one process
        # keeps the short last batch of an epoch, as before.
        self.prompts_per_epoch = len(self.prompts) // global_batch if dist.enabled else math.ceil(len(self.prompts) / global_batch)
        return self.inner

    def optimization(self) -> Optimization:
        # torch's AdamW default weight decay, which PPO has always trained with; a constant learning rate
        return Optimization(self.cfg.learning_rate, weight_decay=0.01, schedule=None)

    def restore_extra(self, checkpoint: Path) -> None:
        _load_value_head(self.inner.value_head, checkpoint)

    def announce(self) -> None:
        rollouts = self.cfg.batch_size * self.dist.world_size
        announce("ppo", self, f"{len(self.prompts)} prompts, {self.cfg.max_steps} steps of {rollouts} rollouts")

    @property
    def actors(self) -> Actors:
        return Actors(self.model, self.inner, self.inner.switch.frozen_copy, self.dist)

    def optimizer_step(self) -> None:
        """Nothing after the step: `ppo_step` updates the weights after every minibatch (`update_weights`)."""

    def initial_state(self) -> dict:
        return {"kl_coef": self.cfg.kl_coef, "running": [0, 0.0, 0.0], "history": []}

    def step(self, step: int, state: dict) -> StepResult:
        cfg, dist, loaded = self.cfg, self.dist, self.loaded
        controller = AdaptiveKL(state["kl_coef"], cfg.target_kl, cfg.kl_horizon)
        self.moments.count, self.moments.mean, self.moments.m2 = state["running"]
        epoch, position = divmod(step - 1, self.prompts_per_epoch)
        global_batch = cfg.batch_size * dist.world_size
        step_prompts = [self.prompts[i] for i in epoch_batches(len(self.prompts), global_batch, cfg.seed, epoch)[position]]
        batch_prompts = dist.shard(step_prompts)[0]
        rollout = sample(self.inner, loaded, batch_prompts, cfg)
        texts = loaded.tokenizer.batch_decode(rollout.response, skip_special_tokens=True)
        raw = np.asarray(self.reward(batch_prompts, [t.strip() for t in texts]), dtype=np.float64)
        every_raw = np.concatenate([np.asarray(part) for part in dist.gather_objects(raw)])  # rank order
        scores = _normalise(every_raw, cfg.reward_norm, self.moments).reshape(dist.world_size, -1)[dist.rank]
        stats = ppo_step(self.actors, rollout, torch.tensor(scores, dtype=torch.float32, device=loaded.device), cfg,
                         controller.coef, self.update_weights, lambda loss: check_finite(loss, step, self.run_out, cfg.learning_rate, "PPO loss"))
        controller.update(stats["kl"], len(step_prompts))
        (response_tokens,) = dist.sum(float(rollout.mask.sum()))
        state.update(kl_coef=controller.coef, running=[self.moments.count, self.moments.mean, self.moments.m2],
                     history=state["history"] + [{"reward": float(every_raw.mean()), "kl": stats["kl"]}])
        record = {"reward": float(every_raw.mean()), "reward_std": float(every_raw.std()), **stats,
                  "kl_coef": controller.coef, "response_tokens": int(response_tokens)}
        return StepResult(stats["policy_loss"] + cfg.vf_coef * stats["value_loss"], record,
                          per_second={"tokens_per_second": response_tokens})

    def describe(self, record: dict) -> str:
        return f"ppo, reward {record['reward']:.3f}, kl {record['kl']:.3f}"

    def final_metrics(self, state: dict, dist: Distributed) -> dict:
        history = state["history"]
        return {
            "method": "ppo", "tune": self.cfg.tune, "steps": state["step"], "world_size": dist.world_size,
            "reward_first": history[0]["reward"], "reward_last": history[-1]["reward"],
            "reward_mean_last_quarter": float(np.mean([h["reward"] for h in history[-max(1, len(history) // 4):]])),
            "kl_first": history[0]["kl"], "kl_last": history[-1]["kl"], "kl_coef_final": state["kl_coef"],
            "trainable_params": self.trainable_params, "total_params": self.total_params,
            "trainable_share": self.trainable_params / self.total_params,
            "peak_memory_bytes": peak_memory_bytes(self.loaded.device), "wall_time_s": state["train_seconds"],
        }

    def summary(self, metrics: dict, weights_dir: Path) -> None:
        trainable, total = metrics["trainable_params"], metrics["total_params"]
        summary_table("ppo", [
            ("mean reward, first step -> last", f"{metrics['reward_first']:.4f} -> {metrics['reward_last']:.4f}"),
            ("KL to reference (first step -> last)", f"{metrics['kl_first']:.4f} -> {metrics['kl_last']:.4f}"),
            ("kl_coef (final)", f"{metrics['kl_coef_final']:.4f}"),
            ("trainable parameters", f"{trainable:,} of {total:,} ({trainable / total:.2%})"),
            ("wall time", f"{metrics['wall_time_s']:.1f} s"),
        ])


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
