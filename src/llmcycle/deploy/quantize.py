"""`llmcycle quantize`: a model folder whose linear weights are stored in int8, int4 or NF4.

Methods, and the library that does the work:

* `int8-dynamic` (torchao `Int8DynamicActivationInt8WeightConfig`): int8 weights, one scale per output row;
  activations quantised to int8 per token at run time. It replaces torch's deprecated eager
  `torch.ao.quantization.quantize_dynamic`; the recipe's `quantize: int8` means this method.
* `int8-weight` (torchao `Int8WeightOnlyConfig`): int8 weights per row, activations stay in float.
* `int4-weight` (torchao `Int4WeightOnlyConfig`, groups of 128, tinygemm's tile-packed layout in bfloat16):
  torchao's int4 kernels run on CUDA only, so on other hardware it is refused before anything is written.
* `nf4` and `int8-bnb` (bitsandbytes through transformers' `BitsAndBytesConfig`): QLoRA's NF4 storage (double
  quantisation, bfloat16 compute) and LLM.int8(). bitsandbytes is the optional extra `llmcycle[bnb]` and is
  used on CUDA only; without CUDA the method is refused naming CUDA, whether or not bitsandbytes is installed.

The quantisation itself is transformers' own: the (merged) model is loaded with `from_pretrained(...,
quantization_config=...)` and saved with `save_pretrained`, so OUT is an ordinary model folder whose
config.json carries the quantisation config and which plain `AutoModel*.from_pretrained(OUT)` loads. torchao
tensors are written as safetensors (torchao's flattened tensor-subclass format, described in the file's JSON
metadata and rebuilt only from torchao's list of allowed classes); no pickle is written or loaded.

Adapters: with `--merge` a LoRA-style adapter is folded into the weights first (llmcycle.deploy.merge), and
OUT is the model folder. Otherwise OUT is laid out as an llmcycle run folder: the quantised base in OUT/model/
(what `from_pretrained` loads) and the adapter copied to OUT/adapter/, checked to load and run on that base
(peft supports LoRA on torchao int8 and on bitsandbytes layers, not on torchao int4). `llmcycle.models.locate`
takes OUT as that base with its adapter attached; the copied adapter_config.json still names the base it was
trained on.
OUT/quantization.json records the method, the library and its version, the source and the layers quantised.

Checked with torchao 0.18.0, transformers 5.24.0 and peft 0.21.2 (CPU): int8 folders round-trip through
safetensors with logits equal to torchao's own `quantize_` applied in memory (tests/test_quantize.py). On a
CPU int8 saves disk and memory but is not faster (bench/RESULTS.md).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..console import note
from ..errors import UserError
from ..models import attach_adapter, load_base, locate, pick_device, resolve_dtype
from ..outputs import publish, staging_beside, write_json
from ..quantization import BNB_METHODS, TORCHAO_METHODS, import_torchao, quiet_torchao, require_hardware, torchao_config
from .merge import merge_adapter

METHODS = TORCHAO_METHODS + BNB_METHODS
ALIASES = {"int8": "int8-dynamic"}
METADATA_FILE = "quantization.json"


@dataclass
class QuantizeResult:
    """What `quantize` wrote."""

    out: Path
    method: str
    quantized_layers: int
    size_on_disk_bytes: int
    seconds: float
    adapter: str  # "merged", "kept" or "none"


def canonical_method(method: str) -> str:
    """The method's name, with the recipe's `int8` as `int8-dynamic`; an unknown one is a user error."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        raise UserError(f"unknown quantisation method '{method}'; use one of {', '.join(METHODS)}")
    return name


def quantization_config(method: str):
    """transformers' quantisation config for `method` (TorchAoConfig or BitsAndBytesConfig)."""
    if method in TORCHAO_METHODS:
        from transformers import TorchAoConfig

        with quiet_torchao():
            return TorchAoConfig(torchao_config(method))
    from transformers import BitsAndBytesConfig

    if method == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def weights_dtype(method: str, dtype: str, device: torch.device) -> torch.dtype:
    """int4 and bitsandbytes compute in bfloat16; torchao's int8 keeps the model's dtype (float32 on a CPU)."""
    if method == "int4-weight" or method in BNB_METHODS:
        if dtype not in ("auto", "bfloat16"):
            note(f"--method {method} computes in bfloat16; --dtype {dtype} is not used")
        return torch.bfloat16
    return resolve_dtype(dtype, device)


def quantized_layers(model: torch.nn.Module) -> int:
    """Weights held in a quantised form: torchao tensor subclasses or bitsandbytes parameters."""
    with quiet_torchao():
        from torchao.utils import TorchAOBaseTensor

    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, TorchAOBaseTensor) or type(weight).__name__ in ("Params4bit", "Int8Params"):
            count += 1
    return count


def weight_file_bytes(folder: str | Path) -> int:
    """Bytes of the weight files alone (*.safetensors, *.bin) directly in `folder`: the model's size on disk."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file() and f.suffix in (".safetensors", ".bin"))


def check_output(out: str) -> Path:
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; give a new folder")
    return target


def quantize(model: str, out: str, method: str, *, adapter: str | None = None, merge: bool = False,
             dtype: str = "auto", trust_remote_code: bool = False) -> QuantizeResult:
    """Write `model` (+ adapter) quantised with `method` to the folder `out`; see the module docstring."""
    method = canonical_method(method)
    device = pick_device()
    require_hardware(method, device)
    target = check_output(out)
    source = locate(model)
    adapters = [*source.adapters, *([("default", adapter)] if adapter else [])]
    if len(adapters) > 1:
        raise UserError(f"{model} already has an adapter; give --adapter only with a base model")
    if merge and not adapters:
        raise UserError(f"--merge: {model} has no adapter to merge; pass --adapter DIR")
    _refuse_quantised(source.base)
    started = time.perf_counter()
    with staging_beside(target) as staging:
        merging = (adapter if adapter else None) if merge else False
        publish(_write_quantized(model, source.base, adapters, staging, method, merging, dtype, device, trust_remote_code), target)
    weights = target / "model" if (target / "model").is_dir() else target
    return QuantizeResult(target, method, _count_from_metadata(target), weight_file_bytes(weights),
                          time.perf_counter() - started, "merged" if merge else "kept" if adapters else "none")


def _refuse_quantised(base: str) -> None:
    """Quantising twice would round already-rounded weights; start from the unquantised model instead."""
    import json

    config = Path(base, "config.json")
    quant = json.loads(config.read_text()).get("quantization_config") if config.is_file() else None
    if quant:
        raise UserError(f"{base} is already quantised ({quant.get('quant_method', 'unknown method')}); "
                        "quantise the unquantised model it came from")


def _write_quantized(model, base, adapters, staging: Path, method, merge, dtype, device, trust_remote_code) -> Path:
    """Merge (if asked), load quantised, save; returns the finished folder inside `staging`.

    `merge` is False, or the --adapter folder (a str), or None when the adapter comes with `model` itself.
    """
    if adapters and merge is not False:
        base = str(merge_adapter(model, merge, str(staging / "merged")))
    merge = merge is not False
    folder = staging / "out"
    note(f"quantising {base} with {method} ({'torchao' if method in TORCHAO_METHODS else 'bitsandbytes'}) on {device.type}")
    with quiet_torchao():
        loaded = load_base(base, torch_dtype=weights_dtype(method, dtype, device), trust_remote_code=trust_remote_code,
                           quantization_config=quantization_config(method), **({"device_map": {"": device}} if device.type == "cuda" else {}))
    count = quantized_layers(loaded.model)
    if count == 0:
        raise UserError(f"{model}: no layer was quantised with {method} (torchao and bitsandbytes quantise nn.Linear layers; "
                        f"{loaded.model.config.model_type} may use other layer types, or widths the method's groups do not divide)")
    keep = bool(adapters) and not merge
    loaded.model.save_pretrained(folder / "model" if keep else folder)
    loaded.tokenizer.save_pretrained(folder / "model" if keep else folder)
    if keep:
        _keep_adapter(loaded, adapters[0][1], folder, method)
    _write_metadata(folder, method, model, count, "merged" if merge else "kept" if adapters else "none")
    return folder


def _keep_adapter(loaded, adapter_dir: str, folder: Path, method: str) -> None:
    """Copy the adapter to OUT/adapter/ and check that peft attaches it to the quantised layers and runs."""
    source = Path(adapter_dir)
    if not (source / "adapter_config.json").is_file() and (source / "adapter" / "adapter_config.json").is_file():
        source = source / "adapter"
    shutil.copytree(source, folder / "adapter", ignore=shutil.ignore_patterns("checkpoint*", "*.pt", "*.pth"))
    try:
        attach_adapter(loaded, "default", str(folder / "adapter"))
        inputs = loaded.tokenizer(["a"], return_tensors="pt").to(loaded.device)
        extra = {"decoder_input_ids": inputs["input_ids"][:, :1]} if loaded.is_encoder_decoder else {}
        with torch.inference_mode(), quiet_torchao():
            loaded.model(**inputs, **extra)
    except (UserError, TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise UserError(f"the adapter {adapter_dir} does not run on a {method} base ({' '.join(str(exc).split())[:160]}); "
                        "pass --merge to fold it into the weights before quantising") from exc


def _write_metadata(folder: Path, method: str, model: str, count: int, adapter: str) -> None:
    library = "torchao" if method in TORCHAO_METHODS else "bitsandbytes"
    version = getattr(import_torchao() if library == "torchao" else __import__("bitsandbytes"), "__version__", "unknown")
    write_json(folder / METADATA_FILE, {"method": method, "library": library, "library_version": version, "source": model,
                                        "quantized_layers": count, "adapter": adapter})


def _count_from_metadata(folder: Path) -> int:
    import json

    return int(json.loads((folder / METADATA_FILE).read_text())["quantized_layers"])
