"""The served names: one base model, its LoRA adapters (peft, several in one batch) and its prompt adapters.

LoRA adapters are attached with peft, which runs rows of one batch through different adapters (`adapter_names`).
Prompt tuning and p-tuning adapters change only the input: peft computes their virtual-token embeddings once
(`get_prompt`) and the engine puts them before each request's prompt, as peft's forward does, so their rows run
through the base weights and share a batch with every other row. Prefix-tuning adapters (decoder-only models) are
read the same way, as the key/value prefix peft puts in every layer's cache; each row starts from a copy of it. The adapter type is read from the adapter's
`adapter_config.json`, never from its name.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import UserError
from ...models import ENCODER_DECODER, LoadedModel, attach_adapter, load_model, locate, model_kind
from .config import served_name

BASE_ROW = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch
LORA_TYPES = ("LORA",)
PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING")
PREFIX_TYPES = ("PREFIX_TUNING",)


@dataclass
class Adapter:
    """One served adapter: its name, folder, peft type and what the engine needs to run it."""

    name: str
    path: str
    peft_type: str
    rank: int | None = None
    prompt: torch.Tensor | None = None  # (virtual tokens, hidden) for prompt adapters
    prefix: list | None = None  # per layer (keys, values), each (1, kv heads, virtual tokens, head size)

    @property
    def virtual_tokens(self) -> int:
        if self.prompt is not None:
            return self.prompt.shape[0]
        return self.prefix[0][0].shape[-2] if self.prefix else 0

    @property
    def lora_name(self) -> str:
        return self.name if self.peft_type in LORA_TYPES else BASE_ROW

    def card(self, parent: str, created: int) -> dict:
        card = {"id": self.name, "object": "model", "created": created, "owned_by": "llmcycle", "parent": parent,
                "root": self.path, "adapter_type": self.peft_type.lower()}
        if self.rank is not None:
            card["rank"] = self.rank
        return card


def adapter_folder(path: str) -> Path:
    """The folder holding adapter_config.json: `path` itself or a run folder's adapter/."""
    folder = Path(path).expanduser()
    for candidate in (folder, folder / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise UserError(f"adapter {path}: no adapter_config.json there (nor in {path}/adapter); give a peft adapter folder")


def adapter_config(name: str, path: str) -> tuple[dict, Path]:
    """adapter_config.json of the adapter `name` at `path`, and where it is."""
    config_path = adapter_folder(path) / "adapter_config.json"
    try:
        return json.loads(config_path.read_text()), config_path
    except (OSError, ValueError) as exc:
        raise UserError(f"adapter {name}: cannot read {config_path}: {exc}") from exc


def read_adapter_config(name: str, path: str) -> dict:
    """adapter_config.json of `path`, checked to be a type the server can run."""
    config, config_path = adapter_config(name, path)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in LORA_TYPES + PROMPT_TYPES + PREFIX_TYPES:
        raise UserError(f"adapter {name} ({config_path}): peft_type {peft_type or 'missing'} is not served; LoRA, "
                        "prompt tuning, p-tuning and prefix tuning are")
    if config.get("use_dora"):
        raise UserError(f"adapter {name} ({config_path}): DoRA adapters cannot share a batch in peft; merge it first (`llmcycle merge`)")
    return config


@dataclass
class ServedModels:
    """The loaded base and adapters, by served name. While serving, only the engine thread changes them, between
    two decoding steps (Engine.add_adapter and remove_adapter)."""

    loaded: LoadedModel
    base_name: str
    base_adapter: str | None  # a run folder given as --model serves its own adapter under the base name
    adapters: dict[str, Adapter] = field(default_factory=dict)
    created: int = 0

    @property
    def names(self) -> list[str]:
        return [self.base_name, *(name for name in self.adapters if name != self.base_adapter)]

    @property
    def has_lora(self) -> bool:
        return any(a.peft_type in LORA_TYPES for a in self.adapters.values()) or self._base_lora()

    def _base_lora(self) -> bool:
        return self.base_adapter is not None and self.base_adapter in getattr(self.loaded.model, "peft_config", {})

    def adapter_for(self, name: str) -> Adapter | None:
        """The adapter that serves `name` (None for the plain base); KeyError for an unknown name."""
        if name == self.base_name:
            return self.adapters.get(self.base_adapter) if self.base_adapter else None
        if name == self.base_adapter:
            raise KeyError(name)
        return self.adapters[name]

    def cards(self) -> list[dict]:
        base = {"id": self.base_name, "object": "model", "created": self.created, "owned_by": "llmcycle",
                "root": self.loaded.name, "parent": None, "max_model_len": self.loaded.context_window}
        hidden = {self.base_adapter} if self.base_adapter else set()
        return [base, *(a.card(self.base_name, self.created) for a in self.adapters.values() if a.name not in hidden)]


def read_prompt(loaded: LoadedModel, path: str, prefix: bool):
    """What peft puts before the input for a prompt-learning adapter: virtual-token embeddings (tokens, hidden), or
    for prefix tuning the per-layer key/value prefix. peft's prompt-learning wrapper adds no layers to the model,
    so it is dropped once this is read."""
    from peft import PeftModel

    try:
        wrapper = PeftModel.from_pretrained(loaded.model, str(adapter_folder(path)), adapter_name="reader")
        return prompt_of(wrapper, prefix)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot load prompt adapter {path}: {' '.join(str(exc).split())[:300]}") from exc


@torch.no_grad()
def prompt_of(wrapper, prefix: bool):
    """The virtual-token embeddings (tokens, hidden) of a peft prompt-learning wrapper's active adapter, or for
    prefix tuning its per-layer (keys, values) prefix."""
    prompts = wrapper.get_prompt(batch_size=1)
    if prefix:  # a transformers cache holding the prefix
        return [(layer.keys.detach().clone(), layer.values.detach().clone()) for layer in prompts.layers]
    virtual = wrapper.active_peft_config.num_virtual_tokens
    return prompts[0, :virtual].detach().clone()  # encoder-decoder models put only the first part before the input


def add_adapter(served: ServedModels, name: str, path: str) -> Adapter:
    """Load one adapter into the served model under `name`."""
    if name in served.adapters or name == served.base_name:
        raise UserError(f"adapter name '{name}' is already served")
    config = read_adapter_config(name, path)
    peft_type = str(config["peft_type"]).upper()
    adapter = Adapter(name, str(Path(path).expanduser()), peft_type, rank=config.get("r"))
    if peft_type in PREFIX_TYPES and served.loaded.is_encoder_decoder:
        raise UserError(f"adapter {name}: prefix-tuning adapters are served for decoder-only models only")
    if peft_type in PROMPT_TYPES + PREFIX_TYPES:
        model = served.loaded.model
        if hasattr(model, "peft_config"):  # LoRA already attached: read the prompt through the plain model
            served.loaded.model = model.get_base_model()
        try:
            read = read_prompt(served.loaded, path, peft_type in PREFIX_TYPES)
        finally:
            served.loaded.model = model
        if peft_type in PREFIX_TYPES:
            adapter.prefix = read
        else:
            adapter.prompt = read.to(served.loaded.device)
    else:
        attach_adapter(served.loaded, name, str(adapter_folder(path)))
    served.adapters[name] = adapter
    return adapter


def remove_adapter(served: ServedModels, name: str) -> None:
    adapter = served.adapters.pop(name)
    if adapter.peft_type in LORA_TYPES:
        served.loaded.model.delete_adapter(name)
        served.loaded.adapters.remove(name)


def base_kind(base: str, trust_remote_code: bool = False) -> str:
    """encoder-decoder or decoder-only, from the base model's config alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the config of {base}: {exc}") from exc
    return model_kind(config)


def check_servable(spec: str, adapters: list[tuple[str, str]], trust_remote_code: bool = False):
    """Where the model is, with every adapter checked to be one the server runs (before any weights load)."""
    source = locate(spec)
    names = [name for name, _ in [*source.adapters, *adapters]]
    prefix = []
    for name, path in [*source.adapters, *adapters]:
        if names.count(name) > 1:
            raise UserError(f"adapter name '{name}' is given twice")
        if str(read_adapter_config(name, path).get("peft_type", "")).upper() in PREFIX_TYPES:
            prefix.append(name)
    if prefix and Path(source.base).is_dir() and base_kind(source.base, trust_remote_code) == ENCODER_DECODER:
        raise UserError(f"adapter {prefix[0]}: prefix-tuning adapters are served for decoder-only models only")
    return source


def load_served(spec: str, adapters: list[tuple[str, str]], *, served_model_name: str | None = None,
                dtype: str = "auto", trust_remote_code: bool = False) -> ServedModels:
    """Load the base of `spec` and every adapter (a run folder's own adapter is served under the base name)."""
    source = check_servable(spec, adapters, trust_remote_code)
    loaded = load_model(source.base, dtype=dtype, trust_remote_code=trust_remote_code)
    loaded.name = spec
    base_name = served_name(spec, served_model_name)
    own = source.adapters[0][0] if source.adapters else None
    served = ServedModels(loaded, base_name, own, created=int(time.time()))
    for name, path in [*source.adapters, *adapters]:
        add_adapter(served, name, path)
    return served
