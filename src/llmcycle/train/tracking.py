"""Experiment tracking from the one training loop: `--report-to tensorboard` and `--report-to mlflow`.

`log.jsonl` in the run folder is always written; these send the same numeric fields to the trackers Hugging Face
Trainer users know, through the real libraries (optional extras: `pip install llmcycle[tensorboard]` or
`llmcycle[mlflow]`). TensorBoard event files go to OUT/tensorboard/; MLflow logs to MLFLOW_TRACKING_URI when set,
else to a file store in OUT/mlruns/. Only the main process reports.
"""

from __future__ import annotations

import contextlib
import numbers
from pathlib import Path

from .. import config as configs
from ..errors import UserError
from .distributed import Distributed

def _scalars(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, numbers.Real) and not isinstance(v, bool)}


@contextlib.contextmanager
def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise UserError("--report-to tensorboard needs the tensorboard package: pip install 'llmcycle[tensorboard]'") from exc
    writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def write(record: dict) -> None:
        for name, value in _scalars(record).items():
            writer.add_scalar(f"train/{name}", value, record["step"])

    try:
        yield write
    finally:
        writer.close()


@contextlib.contextmanager
def _mlflow(cfg, out: Path):
    try:
        import mlflow
    except ImportError as exc:
        raise UserError("--report-to mlflow needs the mlflow package: pip install 'llmcycle[mlflow]'") from exc
    import os

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        # MLflow 3 keeps its file store only behind this opt-in; a database or server is the user's to configure.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
    try:
        run = mlflow.start_run(run_name=out.name)
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(f"--report-to mlflow: {' '.join(str(exc).split())[:300]}") from exc
    with run:
        mlflow.log_params({k: v for k, v in configs.to_dict(cfg).items() if v is not None and not isinstance(v, list)})
        yield lambda record: mlflow.log_metrics(_scalars(record), step=record["step"])


@contextlib.contextmanager
def open_trackers(cfg, out: Path, dist: Distributed):
    """A function sending one log record to every tracker named in cfg.report_to (main process only)."""
    names = [n for n in getattr(cfg, "report_to", []) if n != "none"]
    if not names or not dist.is_main:
        yield lambda record: None
        return
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(_tensorboard(out) if name == "tensorboard" else _mlflow(cfg, out)) for name in names]

        def write(record: dict) -> None:
            for writer in writers:
                writer(record)

        yield write
