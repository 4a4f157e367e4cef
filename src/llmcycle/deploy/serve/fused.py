"""Fused kernels for the engine's forward passes, swapped in while it runs and taken out when it stops.

GPT-2, FLAN-T5 (gated-gelu) and many others compute their MLP activation with transformers' `NewGELUActivation`:
the tanh approximation of GELU written as seven elementwise torch operations, each a pass over the MLP's widest
activations. On a CPU that was 17% of `llmcycle eval`'s time on GPT-2 (bench/RESULTS.md). PyTorch computes the same
formula in one kernel (`gelu(approximate="tanh")`); transformers ships it as `GELUTanh` and documents it as
equivalent up to float rounding, and inference engines serve these models with a fused kernel too (vLLM's
`gelu_new`). The difference is of the size that batching itself makes (row order and padding change float
reductions as well): greedy outputs stay equal to the one-prompt-at-a-time loop on the bench's 200 rows, and the
equality tests against transformers' generate keep passing.

The swap is undone when the engine stops (ModelRunner.close), so a verb that trains the model afterwards trains
the modules it loaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

def fuse_activations(model: torch.nn.Module) -> Callable[[], None]:
    """Replace each tanh-approximate GELU written in Python (transformers' NewGELUActivation and FastGELUActivation,
    two spellings of one function; exactly those classes, not subclasses that may compute something else) by the
    fused kernel; returns what undoes it."""
    from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

    fusable = (NewGELUActivation, FastGELUActivation)
    swapped = []
    fused = GELUTanh()
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) in fusable:
                swapped.append((parent, name, child))
    for parent, name, _ in swapped:
        setattr(parent, name, fused)

    def restore() -> None:
        for parent, name, child in swapped:
            setattr(parent, name, child)
        swapped.clear()

    return restore
