"""The compute a pre-training run costs, and the compute-optimal model for a budget.

Kaplan et al. 2020 (training FLOPs = 6 * params * tokens) and Hoffmann et al. 2022 (Chinchilla: compute-optimal
training sees about 20 tokens a parameter, so for a budget C, N = sqrt(C / 120) and D = 20 N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError
from .memory import PETAFLOP_S_DAY, TOKENS_PER_PARAM, Gpu


@dataclass(frozen=True)
class ComputePlan:
    """The cost of training `params` parameters on `tokens` tokens."""

    params: float
    tokens: float
    chinchilla_params: float | None = None
    chinchilla_tokens: float | None = None
    gpu: Gpu | None = None
    utilisation: float = 0.4

    @property
    def flops(self) -> float:
        return 6 * self.params * self.tokens  # forward 2ND + backward 4ND

    @property
    def petaflop_s_days(self) -> float:
        return self.flops / PETAFLOP_S_DAY

    @property
    def gpu_hours(self) -> float | None:
        if self.gpu is None or self.gpu.peak_tflops is None:
            return None
        return self.flops / (self.gpu.peak_tflops * 1e12 * self.utilisation) / 3600

    def to_json(self) -> dict:
        record = {"params": round(self.params), "tokens": round(self.tokens), "flops": self.flops,
                  "petaflop_s_days": self.petaflop_s_days}
        if self.gpu_hours is not None:
            record.update(gpu=self.gpu.name, utilisation=self.utilisation, gpu_hours=self.gpu_hours)
        for name in ("chinchilla_params", "chinchilla_tokens"):
            if getattr(self, name) is not None:
                record[name] = round(getattr(self, name))
        return record


def chinchilla_for_budget(flops: float) -> tuple[float, float]:
    """C = 6ND with D = 20N gives N = sqrt(C / 120)."""
    params = math.sqrt(flops / (6 * TOKENS_PER_PARAM))
    return params, TOKENS_PER_PARAM * params


def plan_compute(
    params: float | None = None, tokens: float | None = None, flops: float | None = None,
    gpu: Gpu | None = None, utilisation: float = 0.4,
) -> ComputePlan:
    """FLOPs and GPU time for a model (and its token count), or the Chinchilla-optimal model for a budget."""
    if not 0 < utilisation <= 1:
        raise UserError(f"--utilisation must be in (0, 1], not {utilisation}")
    if gpu is not None and gpu.peak_tflops is None:
        raise UserError("GPU-hours need a named GPU (--gpu NAME); --gpu-memory gives no throughput")
    for flag, value in (("--params", params), ("--tokens", tokens), ("--flops", flops)):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive, not {value}")
    if flops is not None:
        if params is not None or tokens is not None:
            raise UserError("give --flops alone, or --params (with or without --tokens)")
        best_params, best_tokens = chinchilla_for_budget(flops)
        return ComputePlan(best_params, best_tokens, best_params, best_tokens, gpu, utilisation)
    if params is None:
        raise UserError("give --params N (with or without --tokens D), or --flops C")
    optimal_tokens = TOKENS_PER_PARAM * params
    return ComputePlan(params, tokens or optimal_tokens, None, optimal_tokens, gpu, utilisation)
