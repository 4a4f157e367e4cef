"""The run skeleton: a trainer defined here supplies only its model and data, its step and its metrics, and gets
the run folder, the schedule, checkpoints and an exact resume from `train`."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import build
from safetensors.torch import load_file

from llmcycle import config as configs
from llmcycle.train.distributed import Distributed, DistributedSettings
from llmcycle.train.run import Optimization, StepResult, Trainer, train
from llmcycle.train.settings import LRSchedule, RunSettings

TEXT = "Amy wants to book a table with Ben."


@dataclass
class LanguageModelConfig(RunSettings, DistributedSettings):
    """A run of the next-token trainers below."""

    model: str = ""
    out: str = ""
    max_steps: int = 4
    lr: float = 1e-2
    lr_scheduler: LRSchedule | None = "linear"


class NextToken(Trainer):
    """Next-token prediction on one sentence: the smallest trainer the skeleton runs."""

    description = "next-token"

    def build(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.cfg.model)
        self.batch = self.tokenizer([TEXT], return_tensors="pt")
        self.total_steps = self.cfg.max_steps
        return AutoModelForCausalLM.from_pretrained(self.cfg.model).train()

    def optimization(self) -> Optimization:
        return Optimization(self.cfg.lr, schedule=self.cfg.lr_scheduler)

    def loss(self) -> torch.Tensor:
        return self.model(**self.batch, labels=self.batch["input_ids"]).loss

    def step(self, step: int, state: dict) -> StepResult:
        loss = self.loss()
        loss.backward()
        return StepResult(loss.item())

    def final_metrics(self, state: dict, dist: Distributed) -> dict:
        return {"train_loss": state["last_loss"], "trainable_params": self.trainable_params, "total_params": self.total_params}


class UpdatesInItsStep(NextToken):
    """As PPO does: several updates inside each step, none after it."""

    def step(self, step: int, state: dict) -> StepResult:
        for _ in range(2):
            loss = self.loss()
            loss.backward()
            self.update_weights()
        return StepResult(loss.item())

    def optimizer_step(self) -> None:
        """Nothing: `step` has updated the weights."""

    def final_metrics(self, state: dict, dist: Distributed) -> dict:
        updates = {int(values["step"]) for values in self.optimizer.state.values()}
        return {**super().final_metrics(state, dist), "updates": sorted(updates)}


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    return build("gpt2", tmp_path_factory.mktemp("gpt2"), layers=1, hidden=16, heads=2)


def run(trainer_class, cfg: LanguageModelConfig, resume: bool = False) -> dict:
    return train(cfg, resume, Distributed(), trainer_class)


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def resumed_at_step_2(whole: Path, out: Path, trainer_class) -> dict:
    """`whole` cut back to its step-2 checkpoint and resumed into `out`."""
    shutil.copytree(whole, out)
    for name in ("model", "metrics.json", "checkpoints/step-4"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink(missing_ok=True)
    cfg = configs.from_dict(LanguageModelConfig, configs.read_yaml(out / "config.yaml"), "config.yaml")
    cfg.out = str(out)
    return run(trainer_class, cfg, resume=True)


@pytest.mark.parametrize("trainer_class", [NextToken, UpdatesInItsStep])
def test_a_trainer_gets_the_run_folder_and_an_exact_resume(trainer_class, gpt2, tmp_path):
    cfg = LanguageModelConfig(model=str(gpt2), out=str(tmp_path / "whole"), save_every=2, max_steps=5)
    metrics = run(trainer_class, cfg)
    whole = tmp_path / "whole"
    assert sorted(p.name for p in whole.iterdir()) == ["checkpoints", "config.yaml", "log.jsonl", "metrics.json", "model"]
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert metrics["trainable_params"] == metrics["total_params"] > 0
    losses = [r["loss"] for r in log(whole)]
    assert losses[-1] < losses[0]
    resumed = resumed_at_step_2(whole, tmp_path / "resumed", trainer_class)
    assert [r["loss"] for r in log(tmp_path / "resumed")] == losses and resumed == metrics
    expected = load_file(whole / "model/model.safetensors")
    assert all(torch.equal(value, expected[name]) for name, value in load_file(tmp_path / "resumed/model/model.safetensors").items())


def test_the_schedule_steps_after_each_step(gpt2, tmp_path):
    run(NextToken, LanguageModelConfig(model=str(gpt2), out=str(tmp_path / "run"), max_steps=5))
    assert [r["lr"] for r in log(tmp_path / "run")] == pytest.approx([1e-2 * (1 - step / 5) for step in range(1, 6)])


def test_a_trainer_without_a_schedule_steps_as_often_as_it_updates(gpt2, tmp_path):
    out = tmp_path / "run"
    metrics = run(UpdatesInItsStep, LanguageModelConfig(model=str(gpt2), out=str(out), save_every=2, lr_scheduler=None))
    assert metrics["updates"] == [8]  # two a step, none after it
    assert [r["lr"] for r in log(out)] == [1e-2] * 4  # constant, still logged
    assert sorted(p.name for p in (out / "checkpoints/step-2").iterdir()) == [
        "model", "optimizer.pt", "rng.pt", "trainer_state.json"]  # no scheduler to save
