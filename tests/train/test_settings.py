"""Each choice is one Literal type: the flags, the planner and the trainers offer and handle the same values."""

import typing

import click

from llmcycle.cli.plan import PRECISION_FLAGS, STRATEGY_FLAGS, memory
from llmcycle.cli.train import finetune
from llmcycle.train.methods import ADAPTER_METHODS, DEFAULT_LR
from llmcycle.train.settings import DeepSpeedStage, Dtype, LRSchedule, Method, PlannedMethod, PlannedSharding, Precision, Strategy


def choices(command: click.Command, name: str) -> tuple:
    (option,) = [p for p in command.params if p.name == name]
    return tuple(option.type.choices)


def test_the_fine_tuning_flags_offer_the_literals():
    assert choices(finetune, "method") == typing.get_args(Method)
    assert choices(finetune, "lr_scheduler") == typing.get_args(LRSchedule)
    assert choices(finetune, "dtype") == typing.get_args(Dtype) == ("auto", "float32", "bfloat16", "float16")


def test_every_method_has_a_learning_rate_and_the_planner_plans_all_but_freeze():
    assert set(DEFAULT_LR) == set(typing.get_args(Method)) > set(ADAPTER_METHODS)
    assert set(typing.get_args(Method)) - set(typing.get_args(PlannedMethod)) == {"freeze"}
    assert choices(memory, "method") == typing.get_args(PlannedMethod)


def test_every_planned_sharding_and_precision_has_its_training_flags():
    assert set(STRATEGY_FLAGS) == set(typing.get_args(PlannedSharding)) >= set(typing.get_args(Strategy))
    assert set(typing.get_args(DeepSpeedStage)) <= set(typing.get_args(PlannedSharding))
    assert set(PRECISION_FLAGS) == set(typing.get_args(Precision)) and choices(memory, "precision") == typing.get_args(Precision)
