"""`llmcycle serve` against vLLM-CPU, measured by vLLM's own benchmark client (`vllm bench serve`).

bench/serve_throughput.py drives both servers with a client written here; this script lets vLLM's client do the
measuring instead, so the comparison does not rest on our own load generator. Both servers serve
serve_throughput.py's tiny Llama (2 layers, hidden 128) in float32; the client sends `--num-prompts` random-token
prompts of `--input-len` tokens at `--concurrency` requests at a time, each asking for exactly `--output-len`
tokens (`--ignore-eos`), through the completions, chat or Responses route (`--backend`). Servers run one at a time,
alternating over `--rounds`, and the script prints each run's output tokens/s and mean time to first token as vLLM's
client reports them, with the ratio of medians.

vLLM comes from the side environment of /work/shared/peers/venv-vllm-cpu.sh; its `vllm` script lacks package
metadata there, so the client is run as its module (`vllm.benchmarks.serve`).
Run: `python bench/vllm_bench_client.py [--rounds 3 --num-prompts 512 --concurrency 16 --backend vllm]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import build_models, free_port, server_command, stop, vllm_python, wait_healthy  # noqa: E402

ROUTES = {"vllm": "/v1/completions", "openai-chat": "/v1/chat/completions", "openai-responses": "/v1/responses"}
CLIENT = """
import argparse, sys
from vllm.benchmarks.serve import add_cli_args, main
parser = argparse.ArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def measure(kind: str, base: Path, adapter: Path, work: Path, args) -> dict | None:
    """Start one server, run vLLM's client against it, stop it; the client's figures."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(work / f"{kind}.log", "a") as log:
        server = subprocess.Popen(server_command(kind, base, adapter, port), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            if not wait_healthy(f"http://127.0.0.1:{port}", server):
                print(f"{kind}: did not start; see {log.name}", file=sys.stderr)
                return None
            common = ["--backend", args.backend, "--endpoint", ROUTES[args.backend], "--base-url", f"http://127.0.0.1:{port}",
                      "--model", "base", "--tokenizer", str(base), "--dataset-name", "random", "--seed", "0",
                      "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
                      "--max-concurrency", str(args.concurrency), "--ignore-eos"]
            # a short warm-up (first requests build caches on both servers), then the measured run
            subprocess.run([vllm_python(), "-c", CLIENT, *common, "--num-prompts", str(2 * args.concurrency)],
                           capture_output=True, text=True, env=env, timeout=600, check=True)
            done = subprocess.run([vllm_python(), "-c", CLIENT, *common, "--num-prompts", str(args.num_prompts)],
                                  capture_output=True, text=True, env=env, timeout=1200, check=True)
        finally:
            stop(server)
    figures = {}
    for line in done.stdout.splitlines():
        name, _, value = line.rpartition(":")
        if name.strip() in ("Successful requests", "Failed requests", "Output token throughput (tok/s)", "Mean TTFT (ms)"):
            figures[name.strip()] = float(value)
    print(f"{kind}: {figures}", file=sys.stderr, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--backend", choices=sorted(ROUTES), default="vllm")
    args = parser.parse_args()
    if vllm_python() is None:
        sys.exit("vLLM's CPU build is not installed: run /work/shared/peers/venv-vllm-cpu.sh")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base, adapter = build_models(work)
        runs = {"llmcycle": [], "vllm": []}
        for round_ in range(args.rounds):
            for kind in (("llmcycle", "vllm") if round_ % 2 == 0 else ("vllm", "llmcycle")):
                figures = measure(kind, base, adapter, work, args)
                if figures is not None:
                    runs[kind].append(figures)
    rate = "Output token throughput (tok/s)"
    print(f"\nvLLM's client, backend {args.backend} ({ROUTES[args.backend]}), {args.num_prompts} prompts of "
          f"{args.input_len} tokens, {args.output_len} output tokens each, {args.concurrency} at a time\n")
    print("| server | output tok/s, each run | median | mean TTFT ms (median) | failed requests |\n|---|---|---|---|---|")
    for kind, figures in runs.items():
        if figures:
            rates = [f[rate] for f in figures]
            print(f"| {kind} | {' / '.join(f'{r:,.0f}' for r in rates)} | {statistics.median(rates):,.0f} | "
                  f"{statistics.median(f['Mean TTFT (ms)'] for f in figures):.0f} | "
                  f"{sum(f.get('Failed requests', 0) for f in figures):.0f} |")
    if runs["llmcycle"] and runs["vllm"]:
        ours, theirs = ([f[rate] for f in runs[kind]] for kind in ("llmcycle", "vllm"))
        print(f"\nllmcycle / vLLM-CPU (medians): {statistics.median(ours) / statistics.median(theirs):.2f}x; "
              f"run by run: {', '.join(f'{a / b:.2f}x' for a, b in zip(ours, theirs))}")


if __name__ == "__main__":
    main()
