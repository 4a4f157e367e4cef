"""The quantisation libraries and the hardware each method needs: what loading a quantised folder and writing one
(deploy/quantize.py) both check, and the int4 group size the memory planner sizes with.

torch and torchao are imported inside the functions, so the planner reads INT4_GROUP without loading them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch

TORCHAO_METHODS = ("int8-dynamic", "int8-weight", "int4-weight")
BNB_METHODS = ("nf4", "int8-bnb")
INT4_GROUP = 128  # torchao's default int4 weight-only group; inputs it does not divide stay float
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")  # missing optional CUDA kernels, a deprecation in torchao's import


@contextlib.contextmanager
def quiet_torchao():
    """torchao logs at import that optional kernels for other hardware did not load; not for users."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def import_torchao():
    """torchao, with the modules transformers imports to read and write its safetensors, imported quietly."""
    with quiet_torchao():
        import torchao
        import torchao.prototype.safetensors.safetensors_support  # noqa: F401

    return torchao


def require_hardware(method: str, device: torch.device) -> None:
    """Refuse, in one line naming what is missing, a method that cannot run on `device`."""
    if method in BNB_METHODS:
        if device.type != "cuda":
            raise UserError(f"--method {method} needs a CUDA GPU (bitsandbytes quantises on CUDA), and none is visible here; "
                            "on this machine use int8-dynamic or int8-weight")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise UserError(f"--method {method} needs bitsandbytes: pip install 'llmcycle[bnb]'") from exc
    elif method == "int4-weight" and device.type != "cuda":
        raise UserError("--method int4-weight needs a CUDA GPU: torchao's int4 weight-only kernels run on CUDA only; "
                        "on this machine use int8-weight or int8-dynamic")
    if method in TORCHAO_METHODS:
        _probe(method, device)


def _probe(method: str, device: torch.device) -> None:
    """Quantise and run one small linear layer, so a kernel missing on this hardware fails before any work."""
    import torch

    dtype = torch.bfloat16 if method == "int4-weight" else torch.float32
    layer = torch.nn.Linear(256, 256, dtype=dtype, device=device)
    try:
        with quiet_torchao():
            from torchao.quantization import quantize_

            quantize_(layer, torchao_config(method))
            layer(torch.ones(2, 256, dtype=dtype, device=device))
    except (ImportError, RuntimeError, AssertionError, NotImplementedError) as exc:
        version = import_torchao().__version__
        raise UserError(f"--method {method} cannot run on {device.type} with torchao {version}: {' '.join(str(exc).split())[:200]}") from exc


def torchao_config(method: str):
    with quiet_torchao():
        from torchao.quantization import Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if method == "int8-dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    if method == "int8-weight":
        return Int8WeightOnlyConfig()
    return Int4WeightOnlyConfig(group_size=INT4_GROUP, int4_packing_format="tile_packed_to_4d")


def require_backend(config) -> None:
    """Before loading a folder written by `quantize`: its library is importable quietly, and CUDA is there for bitsandbytes."""
    import torch

    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    method = getattr(method, "value", method)
    if method == "torchao":
        import_torchao()
    elif method == "bitsandbytes":
        four_bit = quant.get("load_in_4bit") if isinstance(quant, dict) else getattr(quant, "load_in_4bit", False)
        if not torch.cuda.is_available():
            raise UserError(f"{getattr(config, '_name_or_path', 'the model')} is quantised with bitsandbytes "
                            f"({'4-bit' if four_bit else '8-bit'}), which needs a CUDA GPU, and none is visible here")
        require_hardware("nf4" if four_bit else "int8-bnb", torch.device("cuda"))
