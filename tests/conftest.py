"""Tiny models built from configs, with a tokenizer trained on the tests' own text; nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
torch.set_num_threads(1)  # tiny models gain nothing from a second thread, and lose much when the machine is busy

NAMES = ["Amy", "Ben", "Carla", "Dev", "Elena", "Farid"]
TASKS = ["book a table", "fix the printer", "plan a trip", "buy a present", "move the meeting", "find a flat"]


def dialogue_rows(count: int, seed: int = 0) -> list[dict]:
    """prompt/completion rows of varied length: short dialogues and their summaries."""
    rows = []
    for i in range(count):
        a, b = NAMES[(i + seed) % len(NAMES)], NAMES[(i * 5 + 1 + seed) % len(NAMES)]
        task = TASKS[(i * 7 + seed) % len(TASKS)]
        turns = " ".join(f"#Person{1 + t % 2}#: can we {task} today?" for t in range((i % 4) + 1))
        rows.append({"prompt": f"Summarize: {a} and {b}. {turns} Summary:", "completion": f"{a} wants to {task} with {b}."})
    return rows


CORPUS = [f"{r['prompt']} {r['completion']}" for r in dialogue_rows(60)] + [
    "Give a short sentence describing the following product review: great shoes, very light.",
    "User: hello Assistant: hi there System: be brief ### Instruction: Input: Response:",
]


def build(arch: str, out: Path, **size) -> Path:
    """A tiny model of `arch` whose weight matrices are re-drawn with a wider spread, so greedy outputs vary by prompt.

    Freshly initialised tiny models tend to repeat one token whatever the prompt, which would let a broken
    batching or seeding pass the tests unnoticed.
    """
    from llmcycle.train.scratch import ScratchSpec, build_model, train_tokenizer

    tokenizer = train_tokenizer(CORPUS, 400, append_eos=arch in ("t5", "bart"))
    tokenizer.model_max_length = size.get("context", 512)
    model = build_model(ScratchSpec(arch=arch, **size), tokenizer)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    if arch == "t5":  # with every matrix at 0.1, T5's d^-0.5 output scaling would leave the first logits near zero
        model.config.scale_decoder_outputs = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory) -> Path:
    return build("t5", tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    return build("gpt2", tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return build("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(params=["t5", "gpt2"])
def model_dir(request) -> Path:
    """One encoder-decoder and one decoder-only model."""
    return request.getfixturevalue(f"{request.param}_dir")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def dialogues(tmp_path) -> Path:
    return write_jsonl(tmp_path / "dialogues.jsonl", dialogue_rows(12))


def run_cli(*args: str) -> int:
    """Run `llmcycle ARGS` in-process; returns the exit status."""
    from llmcycle.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def peft_forward_greedy(base: Path, adapter: Path, prompt: str, max_tokens: int) -> str:
    """Greedy decoding with peft's own forward (the virtual tokens put before the whole sequence on every call, no
    cache): the reference for decoder-only prompt and prefix tuning, where peft 0.21's `generate` under transformers 5
    puts the virtual tokens into the cache again at every step (it looks for `past_key_values`, which transformers
    renamed)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(max_tokens):
            token = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()
            if token.item() == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True).strip()


def prefix_adapter(base: Path, out: Path, seq2seq: bool) -> Path:
    """A prefix-tuning adapter with random (non-zero) prefixes."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    config = peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM")
    model = peft.get_peft_model(auto.from_pretrained(base), config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "prompt_encoder" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)))
    model.save_pretrained(out)
    return out


def lora_adapter(base, out):
    """A LoRA adapter with random (non-zero) weights, so it writes differently from its base."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(out)
    return out
