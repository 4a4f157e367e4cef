"""Experiment tracking from the one training loop: the TensorBoard event file holds the loss curve of log.jsonl."""

from __future__ import annotations

import json

import pytest

from conftest import dialogue_rows, run_cli, write_jsonl


def test_tensorboard_event_file_has_the_loss_curve(gpt2_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_jsonl(tmp_path / "train.jsonl", dialogue_rows(8))
    out = tmp_path / "run"
    status = run_cli("finetune", "-m", gpt2_dir, "-d", data, "--method", "lora", "--max-steps", "3", "--batch-size", "4",
                     "--report-to", "tensorboard", "--out", out)
    assert status == 0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1  # inside the run folder
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    curve = [(event.step, event.value) for event in accumulator.Scalars("train/loss")]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [step for step, _ in curve] == [1, 2, 3]
    assert [value for _, value in curve] == pytest.approx([record["loss"] for record in logged], rel=1e-6)
    assert "train/lr" in accumulator.Tags()["scalars"]


def test_unknown_tracker_is_a_one_line_error(gpt2_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", dialogue_rows(4))
    status = run_cli("finetune", "-m", gpt2_dir, "-d", data, "--report-to", "wandb", "--out", tmp_path / "run")
    assert status == 2
    assert "--report-to" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_mlflow_run_has_the_loss_curve_and_the_config(gpt2_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = write_jsonl(tmp_path / "train.jsonl", dialogue_rows(8))
    out = tmp_path / "run"
    assert run_cli("finetune", "-m", gpt2_dir, "-d", data, "--method", "lora", "--max-steps", "3", "--batch-size", "4",
                   "--lora-rank", "4", "--report-to", "mlflow", "--out", out) == 0
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if client.search_runs([e.experiment_id])]
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([record["loss"] for record in logged], rel=1e-6)
    assert run.data.params["lora_rank"] == "4" and run.data.params["method"] == "lora"
