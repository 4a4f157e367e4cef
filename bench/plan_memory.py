"""Planner estimates (`llmcycle plan memory`) against memory measured while training on this CPU.

For each model and method, one training setup runs in a fresh subprocess (so no allocation of an earlier run
is still mapped) and is measured three ways:

* model states, exactly: the bytes of every parameter, gradient and optimizer-state tensor after one AdamW step
  (tied weights counted once);
* activations at their peak, as the process sees them: the peak resident set size during forward + backward,
  sampled every 0.5 ms, less the RSS just before the forward pass (gradients and optimizer states already
  allocated); compared with the planner's activations;
* what the forward pass saves, exactly: the bytes of the tensors autograd saves for the backward pass
  (collected with `torch.autograd.graph.saved_tensors_hooks`, storages counted once, parameters left out), plus
  the logits the caller holds; compared with the planner's `saved_activation_bytes` (its activations less the
  gradients of the log-softmax and the logits, which exist only once backward starts).

On a CPU, PyTorch's dropout keeps an fp32 mask (and its input); CUDA runs `torch.native_dropout`, which keeps a
1-byte mask, as the formula assumes. `--native-dropout` makes the CPU run do the same, to measure what a GPU
would keep; the CPU default is measured too.

glibc's mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_) so that freed tensors go back to the system and RSS
follows live memory. Models are built from configs (nothing is downloaded) in fp32 with eager attention, the
setting the planner's activation formula (Korthikanti et al. 2022) describes: `--precision fp32`, AdamW.
`--gradient-checkpointing` recomputes each layer in backward (with full and lora: peft's prompt methods refuse or
break under it). Run: `python bench/plan_memory.py [--models gpt2,gpt2-gelu,llama --methods
full,lora,prompt-tuning,prefix-tuning --batch-size 8 --max-length 256 --native-dropout --gradient-checkpointing]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from llmcycle.plan.memory import TrainingSetup, plan_memory, saved_activation_bytes, shape_from_model

MB = 1e6
CONFIGS = {
    "gpt2": dict(model_type="gpt2", vocab_size=8000, n_embd=256, n_layer=4, n_head=4, n_positions=1024),
    # the same block with a fused GeLU, as the activation formula assumes (GPT-2's gelu_new is written in Python
    # and autograd keeps four 4h-wide intermediates of it instead of one)
    "gpt2-gelu": dict(model_type="gpt2", vocab_size=8000, n_embd=256, n_layer=4, n_head=4, n_positions=1024,
                      activation_function="gelu_pytorch_tanh"),
    "llama": dict(model_type="llama", vocab_size=8000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024),
}


def build(model_name: str, folder: Path, method: str):
    """A model from `CONFIGS`, saved config in `folder`, wrapped by peft for the parameter-efficient methods."""
    import peft
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(CONFIGS[model_name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config.save_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    peft_configs = {
        "lora": lambda: peft.LoraConfig(r=8, task_type="CAUSAL_LM", fan_in_fan_out=model_name.startswith("gpt2")),
        "prompt-tuning": lambda: peft.PromptTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM"),
        "prefix-tuning": lambda: peft.PrefixTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM"),
    }
    if method in peft_configs:
        model = peft.get_peft_model(model, peft_configs[method]())
    return model.train()


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if torch.is_tensor(t)}
    return sum(storages.values())


def model_state_bytes(model, optimizer) -> int:
    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    states = [value for state in optimizer.state.values() for value in state.values()]
    return tensor_bytes(params) + tensor_bytes(grads) + tensor_bytes(states)


def batch(vocab: int, batch_size: int, length: int) -> dict:
    ids = torch.randint(0, vocab, (batch_size, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


def measured_saved_bytes(model, inputs) -> int:
    """Bytes autograd keeps for backward during one forward pass, plus the logits returned to the caller."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(**inputs)
    logits = output.logits
    held = 0 if logits.untyped_storage().data_ptr() in saved else logits.untyped_storage().nbytes()
    output.loss.backward()
    return sum(saved.values()) + held


def peak_rss_delta(model, inputs) -> int:
    """Peak RSS during forward + backward, less the RSS before it (sampled every 0.5 ms)."""
    import psutil

    process, peak, running = psutil.Process(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.0005)

    before = process.memory_info().rss
    sampler = threading.Thread(target=sample)
    sampler.start()
    model(**inputs).loss.backward()
    running[0] = False
    sampler.join()
    return max(peak[0], process.memory_info().rss) - before


def use_native_dropout() -> None:
    """Dropout as CUDA runs it: `torch.native_dropout` keeps a bool mask instead of an fp32 one."""
    import torch.nn.functional as F

    def dropout(input, p=0.5, training=True, inplace=False):
        return torch.native_dropout(input, p, training)[0] if training and p > 0 else input

    F.dropout = dropout


def measure(model_name: str, method: str, batch_size: int, length: int, native_dropout: bool, checkpointing: bool) -> dict:
    """One run: a warm-up step at batch 1 allocates gradients and optimizer states, then the measured passes."""
    if native_dropout:
        use_native_dropout()
    with tempfile.TemporaryDirectory() as folder:
        model = build(model_name, Path(folder), method)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if method != "full":  # frozen embeddings: the checkpointed layers' inputs must still carry gradients
                model.enable_input_require_grads()
        vocab = CONFIGS[model_name]["vocab_size"]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model(**batch(vocab, 1, 8)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, so the deltas below are activations only
        states = model_state_bytes(model, optimizer)
        inputs = batch(vocab, batch_size, length)
        saved = measured_saved_bytes(model, inputs)
        optimizer.zero_grad(set_to_none=False)
        rss = peak_rss_delta(model, inputs)
        setup = TrainingSetup(method=method, precision="fp32", batch_size=batch_size, max_length=length,
                              gradient_checkpointing=checkpointing)
        shape = shape_from_model(folder)
        planned = plan_memory(shape, setup)
    return {"model": model_name, "method": method, "trainable": planned.trainable_params,
            "planned_states": planned.model_states_gb * 1e9, "states": states,
            "planned_activations": planned.activations_gb * 1e9, "rss": rss,
            "planned_saved": saved_activation_bytes(shape, setup), "saved": saved}


def run_isolated(model_name: str, method: str, batch_size: int, length: int, native_dropout: bool, checkpointing: bool) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = [sys.executable, __file__, "--worker", json.dumps([model_name, method, batch_size, length, native_dropout, checkpointing])]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{model_name} {method} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    """Markdown, in MB: model states, activations at their peak, what is saved for backward, and the total."""
    header = ("| model | method | trainable | states planned | measured | ratio | activations planned | peak RSS delta "
              "| ratio | saved planned | saved measured | ratio | total planned | states + RSS delta | ratio |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        pairs = ((r["planned_states"], r["states"]), (r["planned_activations"], r["rss"]),
                 (r["planned_saved"], r["saved"]), (r["planned_states"] + r["planned_activations"], r["states"] + r["rss"]))
        cells = [r["model"], r["method"], f"{r['trainable']:,}"]
        for planned, measured in pairs:
            cells += [f"{planned / MB:.1f}", f"{measured / MB:.1f}", f"{planned / measured:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gpt2,gpt2-gelu,llama")
    parser.add_argument("--methods", default="full,lora,prompt-tuning,prefix-tuning")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--native-dropout", action="store_true", help="Keep 1-byte dropout masks, as on a GPU.")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="Recompute each layer in backward.")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(*json.loads(args.worker))))
        return
    results = [run_isolated(m, method, args.batch_size, args.max_length, args.native_dropout, args.gradient_checkpointing)
               for m in args.models.split(",") for method in args.methods.split(",")]
    print(table(results))


if __name__ == "__main__":
    main()
