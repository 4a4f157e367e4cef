"""`llmcycle reward` and `align`: a reward model from rankings, then PPO against it or DPO on pairs."""

from __future__ import annotations

import typing

import click

from .. import config as configs
from ..errors import UserError
from ..train.settings import AlignMethod
from .options import given_flags, resolve_config, training_command


def _reward_config():
    from ..align.reward_model import RewardConfig

    return RewardConfig


def _align_configs():
    from ..align.dpo import DPOConfig
    from ..align.ppo import PPOConfig

    return PPOConfig, DPOConfig


@training_command(_reward_config)
def reward(config_file, overrides, resume, **flags):
    """Train a scalar reward model from preference pairs or rankings (Bradley-Terry loss)."""
    from ..align.reward_model import train_reward

    train_reward(resolve_config(_reward_config(), config_file, overrides, flags), resume=resume)


@training_command(_align_configs, skip=("method",))
@click.option("--method", type=click.Choice(typing.get_args(AlignMethod)), required=True)
def align(method, config_file, overrides, resume, **flags):
    """Align with feedback: PPO against a reward with a KL penalty, or DPO on preference pairs."""
    from ..align.dpo import dpo
    from ..align.ppo import ppo

    cls = {config.method: config for config in _align_configs()}[method]
    for name in given_flags(flags):
        if name not in configs.field_types(cls):
            raise UserError(f"--{name.replace('_', '-')} does not apply to --method {method}")
    run = ppo if method == "ppo" else dpo
    run(resolve_config(cls, config_file, overrides, flags, method=method), resume=resume)


COMMANDS = [reward, align]
