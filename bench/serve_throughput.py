"""Serving throughput: `llmcycle serve` against a one-request-at-a-time server and vLLM's CPU build.

Three OpenAI-compatible servers serve the same tiny decoder-only model (Llama, 2 layers, hidden 128, weights redrawn
so greedy text varies) and one LoRA adapter, each in its own process on loopback:
- llmcycle: `llmcycle serve --model BASE --adapter lora=DIR` (continuous batching, adapters per row);
- naive: what a user writes first, a FastAPI handler that calls `model.generate` for one request at a time
  (started by this script with `--naive-server`), switching the peft adapter per request;
- vllm: `python -m vllm.entrypoints.openai.api_server ... --enable-lora --lora-modules lora=DIR` from the side
  environment of /work/shared/peers/venv-vllm-cpu.sh (skipped when it is absent).
For 1, 4 and 16 concurrent clients, 512 requests (half to the base, half to the adapter; varied prompts; fixed
max_tokens with ignore_eos; temperature 0) are sent as bare HTTP requests, streaming where the server streams.
Reported: requests/s, output tokens/s, p50/p95 latency and time to first token (the naive server does not stream:
its first token arrives with the last), and the ratios of llmcycle to the others. Greedy texts of llmcycle and
the naive server are compared request by request.

With `--schema-share 0.5` (the default), each client count runs again with half the requests under a JSON schema
(vLLM's `structured_outputs` extra field), every finished one checked to validate, and the constrained run's rate
is reported as a ratio of the unconstrained one.

Run: `python bench/serve_throughput.py [--requests 512 --clients 1,4,16 --max-tokens 16 --servers llmcycle,naive,vllm
--schema-share 0.5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
VLLM_SCRIPT = Path("/work/shared/peers/venv-vllm-cpu.sh")
TOPICS = ["the train to Lyon", "a broken laptop", "dinner on Friday", "the quarterly report", "a new flat",
          "the football match", "a job interview", "the dentist", "holiday plans", "a lost umbrella"]


def build_models(out: Path) -> tuple[Path, Path]:
    """A tiny Llama (2 layers, hidden 128) and one LoRA adapter with random non-zero weights."""
    import peft
    from transformers import AutoModelForCausalLM

    from llmcycle.train.scratch import ScratchSpec, build_model, train_tokenizer

    texts = [f"#Person1#: Have you heard about {t}? #Person2#: Yes, {t} again. Summary: {t}." for t in TOPICS] * 20
    tokenizer = train_tokenizer(texts, 512, append_eos=False)
    tokenizer.model_max_length = 512
    model = build_model(ScratchSpec(arch="llama", layers=2, hidden=128, heads=4, vocab_size=512), tokenizer)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    base, adapter = out / "base", out / "lora"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    lora = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    lora.save_pretrained(adapter)
    return base, adapter


def prompts(count: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(f"#Person{i % 2 + 1}#: what about {rng.choice(TOPICS)}?" for i in range(rng.randint(1, 6))) + " Summary:"
            for _ in range(count)]


# ---- the one-request-at-a-time server ----

def naive_app(base: str, adapter: str):
    """A handler calling model.generate per request, as a first server would be written."""
    import threading

    from fastapi import FastAPI
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter, adapter_name="lora").eval()
    lock, app = threading.Lock(), FastAPI()

    @app.post("/v1/completions")
    def completions(body: dict):
        ids = tokenizer(body["prompt"], return_tensors="pt")
        new = body.get("max_tokens", 16)
        with lock, torch.inference_mode():
            context = model.disable_adapter() if body["model"] != "lora" else _nothing()
            with context:
                out = model.generate(**ids, max_new_tokens=new, min_new_tokens=new if body.get("ignore_eos") else 0,
                                     do_sample=False, pad_token_id=tokenizer.eos_token_id)
        tokens = out[0, ids["input_ids"].shape[1]:]
        text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        usage = {"prompt_tokens": ids["input_ids"].shape[1], "completion_tokens": len(tokens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": "cmpl-naive", "object": "text_completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}], "usage": usage}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def _nothing():
    import contextlib

    return contextlib.nullcontext()


# ---- running servers and clients ----

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(kind: str, base: Path, adapter: Path, port: int) -> list[str] | None:
    if kind == "llmcycle":
        return [sys.executable, "-m", "llmcycle", "serve", "--model", str(base), "--adapter", f"lora={adapter}",
                "--served-model-name", "base", "--port", str(port), "--max-num-seqs", "64"]
    if kind == "naive":
        return [sys.executable, __file__, "--naive-server", str(port), str(base), str(adapter)]
    python = vllm_python()
    if python is None:
        return None
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base), "--served-model-name", "base",
            "--enable-lora", "--lora-modules", f"lora={adapter}", "--max-lora-rank", "8", "--max-model-len", "256",
            "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)]


def vllm_python() -> str | None:
    home = Path(os.environ.get("PEERS_HOME", "/tmp/llmcycle-peers")) / "vllm-cpu"
    return str(home / "bin" / "python") if (home / "ok").is_file() else None


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 600) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


async def post(port: int, body: dict):
    """A bare HTTP/1.0 POST to /v1/completions: the servers reply unchunked and close, so the load generator
    costs little. (The openai client once seemed capped at ~34 requests/s here; for llmcycle that was Nagle's
    delay on its kept-alive connections, fixed in session 13: 62 requests/s one after another now.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer EMPTY\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"server answered {status!r}: {await reader.read()!r}")
    while (await reader.readline()).strip():  # headers
        pass
    return reader, writer


SCHEMA = {"type": "object", "properties": {"topic": {"type": "string", "maxLength": 40},
                                         "mood": {"enum": ["calm", "worried", "happy"]},
                                         "people": {"type": "array", "items": {"type": "integer"}, "maxItems": 4}},
          "required": ["topic", "mood", "people"], "additionalProperties": False}


async def one_request(port: int, model: str, prompt: str, max_tokens: int, stream: bool, schema: bool = False) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    if schema:  # vLLM's extra body field for structured outputs in completions
        body["structured_outputs"] = {"json": SCHEMA}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    start = time.perf_counter()
    reader, writer = await post(port, body)
    first, text, tokens = None, "", 0
    try:
        if not stream:
            answer = json.loads(await reader.read())
            text, tokens = answer["choices"][0]["text"], answer["usage"]["completion_tokens"]
        async for line in reader:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            piece = "".join(choice.get("text") or "" for choice in chunk.get("choices", []))
            if piece and first is None:
                first = time.perf_counter()
            text += piece
            tokens = chunk["usage"]["completion_tokens"] if chunk.get("usage") else tokens
    finally:
        writer.close()
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens, "text": text.strip()}


async def load(port: int, requests: list[tuple[str, str]], clients: int, max_tokens: int, stream: bool,
               schema_share: float = 0.0) -> tuple[list[dict], float]:
    """Send `requests` from `clients` concurrent clients; `schema_share` of them (spread evenly, both models alike)
    under a JSON schema."""
    queue = list(enumerate(requests))
    results: list[dict | None] = [None] * len(requests)

    async def worker():
        while queue:
            index, (model, prompt) = queue.pop(0)
            schema = int((index // 2 + 1) * schema_share) > int(index // 2 * schema_share)
            results[index] = await one_request(port, model, prompt, max_tokens, stream, schema)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return results, time.perf_counter() - start  # type: ignore[return-value]


def summarize(results: list[dict], seconds: float) -> dict:
    latencies = sorted(r["latency"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)

    def pct(values, q):
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]

    return {"requests_per_s": len(results) / seconds, "output_tokens_per_s": sum(r["tokens"] for r in results) / seconds,
            "p50_latency_s": pct(latencies, 0.5), "p95_latency_s": pct(latencies, 0.95),
            "p50_ttft_s": pct(ttfts, 0.5), "p95_ttft_s": pct(ttfts, 0.95)}


def check_schema(kind: str, texts: list[str], share: float) -> None:
    """Every schema row that finished within max_tokens parses and validates; say how many finished."""
    import jsonschema

    rows = [text for index, text in enumerate(texts) if int((index // 2 + 1) * share) > int(index // 2 * share)]
    parsed = []
    for text in rows:
        try:
            parsed.append(json.loads(text))
        except ValueError:
            continue  # cut by max_tokens
    for value in parsed:
        jsonschema.validate(value, SCHEMA)
    checked = "every one validates" if parsed else "so none could be checked"
    print(f"{kind}: {len(parsed)}/{len(rows)} JSON-schema rows complete within max_tokens, {checked}; "
          f"the first: {rows[0]!r}", file=sys.stderr)


def run_server(kind: str, base: Path, adapter: Path, work: list[tuple[str, str]], args) -> dict | None:
    port = free_port()
    command = server_command(kind, base, adapter, port)
    if command is None:
        print(f"{kind}: skipped (no side environment; run {VLLM_SCRIPT})", file=sys.stderr)
        return None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(Path(args.work) / f"{kind}.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(url, process):
            print(f"{kind}: did not start; see {log.name}", file=sys.stderr)
            return None
        # warm-up, with two schema requests where schemas run: a grammar's lexer is built lazily on its first uses
        # (about 1.4 s for this schema's bounded string on this machine), then shared by every later request
        asyncio.run(load(port, work[:4], 2, args.max_tokens, kind != "naive", args.schema_share if kind != "naive" else 0))
        found = {}
        shares = [0.0] + ([args.schema_share] if args.schema_share and kind != "naive" else [])
        for clients in args.clients:
            for share in shares:
                results, seconds = asyncio.run(load(port, work, clients, args.max_tokens, kind != "naive", share))
                key = clients if not share else f"{clients} ({share:.0%} JSON schema)"
                found[key] = {**summarize(results, seconds), "texts": [r["text"] for r in results]}
                print(f"{kind} x{key}: {found[key]['requests_per_s']:.1f} req/s, "
                      f"{found[key]['output_tokens_per_s']:.0f} tok/s", file=sys.stderr)
                if share:
                    check_schema(kind, [r["text"] for r in results], share)
        return found
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL after a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def report(found: dict, args) -> None:
    from llmcycle.console import print_table

    rows = []
    for kind, per_clients in found.items():
        for clients, stats in per_clients.items():
            rows.append([kind, clients, f"{stats['requests_per_s']:.1f}", f"{stats['output_tokens_per_s']:.0f}",
                         f"{stats['p50_latency_s'] * 1000:.0f}", f"{stats['p95_latency_s'] * 1000:.0f}",
                         f"{stats['p50_ttft_s'] * 1000:.0f}", f"{stats['p95_ttft_s'] * 1000:.0f}"])
    print_table(f"{args.requests} requests, max_tokens {args.max_tokens}, temperature 0, half base / half LoRA",
                ["server", "clients", "requests/s", "output tok/s", "p50 ms", "p95 ms", "p50 TTFT ms", "p95 TTFT ms"], rows)
    ours = found.get("llmcycle", {})
    for kind, per_clients in found.items():
        for clients in args.clients:
            key = f"{clients} ({args.schema_share:.0%} JSON schema)"
            if key in per_clients and clients in per_clients:
                ratio = per_clients[key]["output_tokens_per_s"] / per_clients[clients]["output_tokens_per_s"]
                print(f"{kind} at {clients} clients: {args.schema_share:.0%} of rows under a JSON schema run at {ratio:.2f}x "
                      "the unconstrained output tokens/s")
    for other in ("naive", "vllm"):
        for clients in args.clients:
            if clients in ours and clients in found.get(other, {}):
                ratio = ours[clients]["output_tokens_per_s"] / found[other][clients]["output_tokens_per_s"]
                print(f"llmcycle / {other} output tokens/s at {clients} clients: {ratio:.2f}x")
    if "naive" in found and ours:
        clients = args.clients[0]
        same = sum(a == b for a, b in zip(ours[clients]["texts"], found["naive"][clients]["texts"]))
        print(f"greedy texts equal to the naive server's: {same}/{len(ours[clients]['texts'])}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--naive-server":
        import uvicorn

        port, base, adapter = int(sys.argv[2]), sys.argv[3], sys.argv[4]
        uvicorn.run(naive_app(base, adapter), host="127.0.0.1", port=port, log_level="warning")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--servers", default="llmcycle,naive,vllm")
    parser.add_argument("--schema-share", type=float, default=0.5,
                        help="Also run each client count with this share of requests under a JSON schema (0: never).")
    parser.add_argument("--json", default=None, help="Also write the figures here.")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as work:
        args.work = work
        base, adapter = build_models(Path(work))
        work_items = [("base" if i % 2 else "lora", p) for i, p in enumerate(prompts(args.requests))]
        found = {}
        for kind in args.servers.split(","):
            result = run_server(kind, base, adapter, work_items, args)
            if result:
                found[kind] = result
        report(found, args)
        if args.json:
            Path(args.json).write_text(json.dumps({k: {c: {m: v for m, v in s.items() if m != "texts"} for c, s in r.items()}
                                                   for k, r in found.items()}, indent=1))


if __name__ == "__main__":
    main()
