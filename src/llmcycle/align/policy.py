"""The policy DPO and PPO train, and the reference they keep it close to.

Three starts, one interface (`Policy.reference()` is a context in which the policy's forward is the reference's):

    a model, tune full      the policy trains every weight; the reference is a frozen copy
    a model, tune lora      a fresh LoRA adapter trains; the reference is the base with the adapter disabled
    an adapter run          (the course's detox lab: LoRA fine-tune, then PPO on that PEFT model) the run's adapter
                            keeps training (same type, rank and targets), and the reference is the same adapter
                            as it was: loaded a second time under the name `reference`, frozen, on the same base,
                            so no second copy of the base weights. The two adapters are switched per pass.
                            With tune full the adapter is merged into the base first.

Switching uses peft's `set_adapter`, which also marks the active adapter trainable; the trainable flags are put
back after every reference pass, so only the policy's adapter ever trains. Only the policy's adapter is saved
(`adapter/` loads with plain `PeftModel.from_pretrained(base, ...)` and gives the policy's outputs).
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch

from ..console import note
from ..errors import UserError
from ..models import LoadedModel, locate
from ..train.methods import load_training_base, lora_config

REFERENCE = "reference"
POLICY = "default"
CONTINUABLE = {"LORA": "LoRA", "PROMPT_TUNING": "prompt tuning", "PREFIX_TUNING": "prefix tuning"}


def load_policy_base(cfg, verb: str) -> tuple[LoadedModel, str | None]:
    """The base model on the training device, and the adapter folder when `cfg.model` is an adapter run."""
    source = locate(cfg.model)
    adapter_dir = source.adapters[0][1] if source.adapters else None
    if adapter_dir is not None:
        _check_continuable(adapter_dir, cfg.tune)
    loaded = load_training_base(source.base, cfg.dtype, cfg.trust_remote_code)
    if not hasattr(loaded.model, "generate"):
        raise UserError(f"{cfg.model} cannot generate, so it cannot be a {verb} policy")
    return loaded, adapter_dir


def _check_continuable(adapter_dir: str, tune: str) -> None:
    try:
        peft_type = _peft_type(adapter_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"adapter {adapter_dir}: adapter_config.json is missing or names no peft_type") from exc
    if peft_type not in CONTINUABLE:
        raise UserError(f"adapter {adapter_dir} is {peft_type}; alignment continues LoRA, prompt-tuning or prefix-tuning adapters")
    if tune == "full" and peft_type != "LORA":
        raise UserError(f"--tune full merges the adapter into the base first, which peft does for LoRA only "
                        f"({adapter_dir} is {CONTINUABLE[peft_type]}); use --tune lora to continue it")


class Policy:
    """The trained model (`model`), what `reference()` switches to, and whether only an adapter trains."""

    def __init__(self, model: torch.nn.Module, frozen_copy: torch.nn.Module | None, is_adapter: bool):
        self.model, self.frozen_copy, self.is_adapter = model, frozen_copy, is_adapter

    @property
    def continues_adapter(self) -> bool:
        return REFERENCE in getattr(self.model, "peft_config", {})

    @contextlib.contextmanager
    def reference(self, model: torch.nn.Module | None = None):
        """Inside, `model` (default the policy; pass the unwrapped one under DDP) computes the reference's outputs.
        With a frozen copy, use `frozen_copy` instead (the context changes nothing)."""
        model = model or self.model
        if self.frozen_copy is not None:
            yield
        elif self.continues_adapter:
            flags = [(p, p.requires_grad) for p in model.parameters()]
            model.set_adapter(REFERENCE)
            try:
                yield
            finally:
                model.set_adapter(POLICY)
                for parameter, flag in flags:
                    parameter.requires_grad_(flag)
        else:
            with model.disable_adapter():
                yield


def build_policy(loaded: LoadedModel, cfg, adapter_dir: str | None) -> Policy:
    """The policy and its reference for `cfg.tune`, from a model or an adapter run (see the module docstring)."""
    import peft

    model = loaded.model
    if adapter_dir is not None and cfg.tune == "full":
        model = peft.PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    if cfg.tune == "full":
        return Policy(model.eval(), copy.deepcopy(model).eval().requires_grad_(False), False)
    if adapter_dir is not None:
        return Policy(_continued_adapter(model, adapter_dir), None, True)
    lora = lora_config(model, loaded.is_encoder_decoder, cfg)  # no LoRA dropout: dropout is off throughout
    try:
        model = peft.get_peft_model(model, lora)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"cannot add LoRA to this model: {' '.join(str(exc).split())[:300]}") from exc
    return Policy(model.eval(), None, True)


def _continued_adapter(model: torch.nn.Module, adapter_dir: str) -> torch.nn.Module:
    """The run's adapter, trainable, plus the same adapter frozen under the name `reference`.

    peft refuses `is_trainable=True` for prompt-learning adapters loaded from disk, though their weights train like
    any other; those are loaded frozen and their embedding switched to trainable here.
    """
    import peft

    prompt_learning = _peft_type(adapter_dir) != "LORA"
    try:
        policy = peft.PeftModel.from_pretrained(model, adapter_dir, adapter_name=POLICY, is_trainable=not prompt_learning)
        policy.load_adapter(adapter_dir, adapter_name=REFERENCE, is_trainable=False)
        policy.set_adapter(POLICY)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot continue the adapter {adapter_dir} on this base with peft: "
                        f"{' '.join(str(exc).split())[:300]}") from exc
    for name, parameter in policy.named_parameters():  # only the policy's adapter trains
        ours = f".{POLICY}." in name or name.endswith(f".{POLICY}")
        parameter.requires_grad_((parameter.requires_grad or (prompt_learning and ours)) and f".{REFERENCE}" not in name)
    return policy.eval()


def _peft_type(adapter_dir: str) -> str:
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["peft_type"]


def announce(method: str, trainer, work: str) -> None:
    """DPO's and PPO's start-up line: what the policy starts from, the model, what trains, and the work ahead."""
    cfg, loaded, dist = trainer.cfg, trainer.loaded, trainer.dist
    start = f"continuing {trainer.adapter_dir}" if trainer.adapter_dir and cfg.tune == "lora" else cfg.tune
    note(f"{method} ({start}) on {loaded.kind} {Path(loaded.name).name}: {trainer.trainable_params:,} trainable of "
         f"{trainer.total_params:,} parameters; {work}" + (f", {dist.describe()}" if dist.enabled else ""))
