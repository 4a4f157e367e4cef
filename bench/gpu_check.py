"""The CUDA figures, prepared on a machine without a GPU for a later session that has one (issue 14).

Run on the GPU machine from the repository root, with the working tree carried there. Wheels for what the
machine lacks go in an untracked wheels/ folder here first (no internet there), e.g.
`.venv/bin/python -m pip download torchao==0.18.0 --no-deps -d wheels/` (3.4 MB, abi3, torch >= 2.11), then:

    pip install --no-deps wheels/*.whl; PYTHONPATH=src python bench/gpu_check.py --out "$OUT"   # ~5 min on an H200

It writes OUT/gpu_check.json and prints Markdown rows for bench/RESULTS.md. Every section records either its
figures or `not run: REASON`, and one failing section does not stop the others:

1. full: bf16 full fine-tuning of a ~1.1B-parameter Llama built from a config (TinyLlama's shape: 22 layers,
   hidden 2048, MLP 5632, 32 heads, 4 key/value heads, vocab 32000), sequence length 2048, batch 8, pure bf16
   weights with fused AdamW, SDPA attention, no gradient checkpointing: tokens/s over the timed steps, MFU
   against the planner's peak for the GPU (H200: 989 TFLOP/s dense bf16), and the planner's memory estimate
   (`llmcycle plan memory` arithmetic, precision bf16, flash attention) against torch's peak allocation.
   FLOPs a token: 6 * parameters + 12 * layers * hidden * sequence (the attention scores; PaLM's appendix B).
2. qlora: the same model loaded in NF4 by bitsandbytes (double quantisation, bf16 compute) with LoRA r=16 on
   every linear layer; tokens/s and peak memory against the planner's qlora estimate. Needs bitsandbytes,
   which is not installed on the lent machine and whose CUDA wheel is larger than the 64 MiB a run may carry:
   then it records why it did not run.
3. quantize: `llmcycle quantize --compare` on a 100M Llama on CUDA: float32, bfloat16, int8-dynamic,
   int8-weight and int4-weight (torchao's CUDA int4 kernel), sizes against the planner, tokens/s, peak memory.
   Needs torchao (carry its wheel: `pip download torchao==0.18.0 --no-deps -d wheels/`, 3.4 MB; then
   `pip install --no-deps wheels/torchao-*.whl` there).
4. serve: `llmcycle serve` with the 100M Llama and two LoRA adapters on CUDA, 16 concurrent clients each
   sending completions requests alternating between the adapters; output tokens/s over the wall time.
   Needs fastapi and uvicorn (pure-Python wheels; carry them as for torchao) or records why not.

`--tiny` runs every section with a 2-layer model on whatever device is present (a CPU here), to check the
script itself; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)
LLAMA_100M = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12, vocab_size=8000)
LLAMA_TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def llama_config(shape: dict, seq: int):
    from transformers import LlamaConfig

    return LlamaConfig(**shape, max_position_embeddings=seq, tie_word_embeddings=False, attn_implementation="sdpa",
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)


def peak_flops() -> float | None:
    """Dense bf16 peak of the GPU found, from the planner's table (llmcycle.plan.memory.find_gpu)."""
    from llmcycle.plan.memory import find_gpu

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().lower().replace("nvidia", "").replace(" ", "")
    gpu = next((find_gpu(key) for key in ("h200", "h100", "a100", "l4", "a10g") if key in name), None)
    return gpu.peak_tflops * 1e12 if gpu and gpu.peak_tflops else None


def planner_gb(config, method: str, batch: int, seq: int, **extra) -> float:
    """The planner's total for this model and set-up (decimal GB), as `llmcycle plan memory` computes it."""
    from llmcycle.plan.memory import TrainingSetup, plan_memory, shape_from_model

    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        shape = shape_from_model(folder)
    setup = TrainingSetup(method=method, precision="bf16", batch_size=batch, max_length=seq, flash_attention=True, **extra)
    return plan_memory(shape, setup).total_gb


def timed_steps(model, optimizer, batch: int, seq: int, vocab: int, warmup: int, steps: int) -> float:
    """Seconds for `steps` optimizer steps after `warmup` untimed ones, on random tokens."""
    ids = torch.randint(3, vocab, (batch, seq), device=device())
    for step in range(warmup + steps):
        if step == warmup:
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return time.perf_counter() - started


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None


def full_finetune(args) -> dict:
    from transformers import LlamaForCausalLM

    shape, seq, batch = (LLAMA_TINY, 128, 2) if args.tiny else (LLAMA_1B, 2048, 8)
    config = llama_config(shape, seq)
    with torch.device(device()):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    reset_peak()  # the peak from here on: bf16 weights and what training adds, not the float32 initialisation
    model.train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=torch.cuda.is_available())
    seconds = timed_steps(model, optimizer, batch, seq, shape["vocab_size"], warmup=3, steps=args.steps)
    tokens_per_s = args.steps * batch * seq / seconds
    flops_per_token = 6 * params + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * seq
    peak = peak_flops()
    result = {"params": params, "seq": seq, "batch": batch, "steps": args.steps, "seconds": round(seconds, 3),
              "tokens_per_s": round(tokens_per_s, 1), "mfu": None if peak is None else round(tokens_per_s * flops_per_token / peak, 4),
              "peak_gb": peak_gb(), "planner_gb": round(planner_gb(config, "full", batch, seq), 3)}
    del model, optimizer
    return result


def qlora(args) -> dict:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return {"not_run": "bitsandbytes is not installed here (its CUDA wheel is over the 64 MiB a run may carry)"}
    if not torch.cuda.is_available():
        return {"not_run": "no CUDA: bitsandbytes NF4 runs on CUDA"}
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    shape, seq, batch = (LLAMA_TINY, 128, 2) if args.tiny else (LLAMA_1B, 2048, 8)
    config = llama_config(shape, seq)
    with tempfile.TemporaryDirectory() as folder:
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
        reset_peak()
        nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
        model = LlamaForCausalLM.from_pretrained(folder, quantization_config=nf4, dtype=torch.bfloat16, device_map={"": 0})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seconds = timed_steps(model, optimizer, batch, seq, shape["vocab_size"], warmup=3, steps=args.steps)
    result = {"seq": seq, "batch": batch, "steps": args.steps, "tokens_per_s": round(args.steps * batch * seq / seconds, 1),
              "peak_gb": peak_gb(), "planner_gb": round(planner_gb(config, "qlora", batch, seq, lora_rank=16, lora_targets="all-linear"), 3)}
    del model, optimizer
    return result


def small_llama(folder: Path, args) -> Path:
    """The 100M (or, with --tiny, 2-layer) Llama with a byte-level tokenizer, saved to `folder`."""
    from transformers import LlamaForCausalLM

    from llmcycle.data.synthetic import generate
    from llmcycle.train.scratch import train_tokenizer

    shape = dict(LLAMA_TINY if args.tiny else LLAMA_100M)
    tokenizer = train_tokenizer([r["prompt"] + r["completion"] for r in generate("instruct", 500, 3)], shape["vocab_size"], append_eos=False)
    shape["vocab_size"] = len(tokenizer)
    config = llama_config(shape, 1024)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def quantize_forms(args, scratch: Path) -> dict:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return {"not_run": "torchao is not installed here (carry its wheel, see the docstring)"}
    from llmcycle.data.options import DataOptions
    from llmcycle.data.synthetic import generate
    from llmcycle.deploy.compare import available_methods, compare_quantized
    from llmcycle.generate.engine import GenerationSettings
    from llmcycle.outputs import write_jsonl

    model = small_llama(scratch / "llama-100m", args)
    write_jsonl(scratch / "test.jsonl", generate("instruct", 64, 4))
    settings = GenerationSettings(max_new_tokens=64, batch_size=16)
    methods = [m for m in available_methods() if m in ("int8-dynamic", "int8-weight", "int4-weight")]
    result = compare_quantized(str(model), DataOptions(str(scratch / "test.jsonl")), settings, ["rouge"], str(scratch / "forms"),
                               methods=methods, resamples=200)
    keep = ("size_on_disk_bytes", "bytes_per_param", "planned_bytes_per_param", "load_s", "tokens_per_s", "peak_memory_bytes")
    return {"methods": methods, "forms": {name: {k: form[k] for k in keep} for name, form in result["forms"].items()}}


def lora_adapters(model: Path, scratch: Path) -> list[tuple[str, Path]]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    adapters = []
    for index, name in enumerate(("alpha", "beta")):
        torch.manual_seed(index)
        peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(model), LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        peft_model.save_pretrained(scratch / name)
        adapters.append((name, scratch / name))
    return adapters


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def wait_healthy(url: str, server: subprocess.Popen, limit_s: float = 180) -> None:
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"llmcycle serve exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"llmcycle serve was not healthy within {limit_s:.0f} s")


def serve(args, scratch: Path) -> dict:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return {"not_run": f"{exc.name} is not installed here (carry fastapi and uvicorn wheels, see the docstring)"}
    model = scratch / "llama-100m" if (scratch / "llama-100m").is_dir() else small_llama(scratch / "llama-100m", args)
    adapters = lora_adapters(model, scratch)
    port = free_port()
    command = [sys.executable, "-m", "llmcycle", "serve", "--model", str(model), "--port", str(port),
               *[item for name, path in adapters for item in ("--adapter", f"{name}={path}")]]
    server = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server)
        return load_test(url, [name for name, _ in adapters], clients=16, requests_each=4 if args.tiny else 8, max_tokens=128)
    finally:
        server.terminate()
        server.wait(timeout=30)


def load_test(url: str, names: list[str], clients: int, requests_each: int, max_tokens: int) -> dict:
    def client(index: int) -> int:
        tokens = 0
        for step in range(requests_each):
            body = {"model": names[(index + step) % len(names)], "prompt": f"Request {index}-{step}: tell me about", "max_tokens": max_tokens,
                    "temperature": 0}
            tokens += post(url + "/v1/completions", body)["usage"]["completion_tokens"]
        return tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(client, range(clients)))
    seconds = time.perf_counter() - started
    return {"clients": clients, "requests": clients * requests_each, "adapters": names, "output_tokens": tokens,
            "seconds": round(seconds, 2), "output_tokens_per_s": round(tokens / seconds, 1)}


def run_section(name: str, func, *func_args) -> dict:
    started = time.perf_counter()
    try:
        result = func(*func_args)
    except Exception as exc:  # one section failing must not cost the others their device time
        traceback.print_exc()
        result = {"failed": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    result["section_s"] = round(time.perf_counter() - started, 1)
    print(f"[{name}] {json.dumps(result)}", flush=True)
    return result


def environment() -> dict:
    import transformers

    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "command": " ".join(["python", *sys.argv])}


def markdown(report: dict) -> str:
    lines = [f"### {report['environment']['date']}, {report['environment']['device']}", "",
             f"Command: `PYTHONPATH=src {report['environment']['command']}` (torch {report['environment']['torch']}, "
             f"transformers {report['environment']['transformers']})", "", "| section | figures |", "|---|---|"]
    for name in ("full", "qlora", "quantize", "serve"):
        lines.append(f"| {name} | `{json.dumps(report[name])}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="CUDA figures for issue 14 (see the module docstring)")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (after 3 warm-up steps)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on any device: checks the script, not the GPU")
    parser.add_argument("--only", default="full,qlora,quantize,serve")
    args = parser.parse_args()
    report = {"environment": environment()}
    sections = args.only.split(",")
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for name, func, func_args in (("full", full_finetune, (args,)), ("qlora", qlora, (args,)),
                                      ("quantize", quantize_forms, (args, scratch)), ("serve", serve, (args, scratch))):
            report[name] = run_section(name, func, *func_args) if name in sections else {"not_run": "not asked for (--only)"}
            reset_peak()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
