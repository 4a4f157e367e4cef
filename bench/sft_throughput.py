"""LoRA SFT throughput: `llmcycle.train.finetune` against trl's `SFTTrainer` on the same model, data and hyperparameters.

Measures completion tokens per second of training (tokens that carry loss / time of the training loop), peak
memory (max RSS; every run is a fresh subprocess) and the final training loss (mean of the last 10% of steps, at
least 3). Two Llama models built offline by `llmcycle.train.scratch` (random init, no dropout): tiny (2 layers, hidden 64,
vocab 1000; overhead-bound) and 30M parameters (7 layers, hidden 512, vocab 8000; compute-bound). Two data shapes
(`--shapes`), 400 rows each: `dialogue`, synthetic dialogue -> summary rows (prompts ~35-380 tokens, completions
~10-50), where scoring only completion positions saves most; and `short`, a task llmcycle never saw (prompts of about
25 tokens, completions of about 7), where per-step overhead shows.

  llmcycle padded    FinetuneConfig(packing=False): 8 rows a step, padded to the longest row
  llmcycle packed    FinetuneConfig(packing=True): best-fit-decreasing packing into 512-token rows, 8 of those a step
  trl padded         SFTConfig(): 8 rows a step, padded to the longest row
  trl packed         SFTConfig(packing=True): best-fit-decreasing packing into 512-token rows, 8 a step; trl then
                     runs padding-free (the 8 rows flattened into one sequence). Same work per step as llmcycle packed.
  trl padding-free   SFTConfig(padding_free=True, max_length=None): the 8 rows of a step flattened into one
                     sequence, no packing (trl refuses max_length without packing; no row here is over 512 anyway)

Matched: fp32, no autocast, no gradient checkpointing (trl's docs for a CPU; its bf16 and gradient-checkpointing
defaults are switched off), LoRA r=8 alpha=16 dropout 0 on q/k/v/o_proj (what llmcycle's `--lora-targets attention`
picks), AdamW lr 2e-4, linear decay, no warm-up or weight decay, clipping at 1.0, batch 8, no accumulation,
max_length 512, seed 0, loss on completion tokens only (EOS appended), summed and divided by the step's completion
tokens. Besides the loop's time, each run's whole process is timed (start-up, imports, loading, data preparation,
training, saving: what a user waits for). Both shuffle with torch.randperm seeded 0, so the padded and padding-free runs see the same rows in the same
order, and their per-step losses must agree; both pack by best fit decreasing, so the packed runs' losses agree too.
Differences left: trl's AdamW is the fused kernel; trl scores tokens with its chunked "fused LM head" (and also
computes entropy and accuracy for its logs), llmcycle runs its output head only at the scored positions. Times: llmcycle's `wall_time_s` (sum of step
times), trl's `train_runtime` (its loop, per-step logging included). Before each run the script waits for the CPU
to go idle and reruns a run during which other jobs used over 10% of the machine.

Run: `python bench/sft_throughput.py [--shapes dialogue,short] [--sizes tiny,30m] [--repeat 2] [--steps-tiny 150]
[--steps-30m 10]`.
Each configuration runs `--repeat` times, interleaved, and the fastest run counts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"tiny": dict(layers=2, hidden=64, heads=4, vocab_size=1000), "30m": dict(layers=7, hidden=512, heads=8, vocab_size=8000)}
TRAINERS = ("llmcycle padded", "llmcycle packed", "trl padded", "trl packed", "trl padding-free")
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
SYLLABLES = "ka lo mi ren tu sha vo bel dri on ex qua zim por tal ne gri fu sol ya ith mar cle op un ste".split()
NAMES = ["Anna", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hiro", "Ines", "Jon", "Kemal", "Lena", "Moss", "Nia"]
VERBS = ["fix", "move", "cancel", "book", "discuss", "sell", "find", "check", "paint", "plan"]


def lexicon(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(6000)})


def make_rows(count: int, seed: int = 0) -> list[dict]:
    """Dialogues of 2-12 turns; the summary copies names, verb and object from the dialogue, plus some noise words."""
    rng, words = random.Random(seed), lexicon(seed)
    rows = []
    for _ in range(count):
        a, b = rng.sample(NAMES, 2)
        thing, verb = " ".join(rng.choice(words) for _ in range(rng.randint(1, 2))), rng.choice(VERBS)
        turns = [f"{(a, b)[i % 2]}: we should {verb} the {thing} before " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "."
                 for i in range(rng.randint(2, 12))]
        extra = " ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        rows.append({"prompt": "Summarize the dialogue.\n" + "\n".join(turns) + "\nSummary:",
                     "completion": f" {a} and {b} agree to {verb} the {thing} after {extra}."})
    return rows


def make_short_rows(count: int, seed: int = 0) -> list[dict]:
    """Short requests (about 25 tokens) with short answers (about 7): which verb and thing a request is about."""
    rng, words = random.Random(seed + 1), lexicon(seed)
    rows = []
    for _ in range(count):
        name, verb, thing = rng.choice(NAMES), rng.choice(VERBS), rng.choice(words)
        noise = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        rows.append({"prompt": f"Request from {name}: please {verb} the {thing} {noise}. Task:", "completion": f" {verb} {thing}"})
    return rows


SHAPES = {"dialogue": make_rows, "short": make_short_rows}


def build(work: Path, rows: int) -> None:
    """Write train-SHAPE.jsonl for each data shape and one model per size under `work` (kept between runs)."""
    from llmcycle.train.scratch import ScratchSpec, init_model

    for shape, make in SHAPES.items():
        (work / f"train-{shape}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make(rows)))
    data = make_rows(rows)
    rng, words = random.Random(1), lexicon()
    corpus = [r["prompt"] + r["completion"] for r in data] + [" ".join(rng.choice(words) for _ in range(30)) for _ in range(3000)]
    for size, dims in SIZES.items():
        if not (work / size / "config.json").exists():
            init_model(corpus, work / size, ScratchSpec(arch="llama", context=512, dropout=0.0, **dims))


def final_loss(losses: list[float]) -> float:
    tail = losses[-max(3, len(losses) // 10):]
    return sum(tail) / len(tail)


def run_llmcycle(model: str, data: str, steps: int, packed: bool, out: Path) -> dict:
    from llmcycle.train.finetune import FinetuneConfig, finetune

    metrics = finetune(FinetuneConfig(
        model=model, data=data, out=str(out), method="lora", lr=2e-4, batch_size=8, grad_accum=1, max_steps=steps,
        max_length=512, lora_rank=8, lora_alpha=16, lora_dropout=0.0, lora_targets="attention", seed=0, packing=packed))
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    return {"completion_tok_s": metrics["completion_tokens_per_second"], "seconds": metrics["wall_time_s"], "losses": losses,
            "completion_tokens": round(metrics["completion_tokens_per_second"] * metrics["wall_time_s"])}


def run_trl(model_dir: str, data: str, steps: int, mode: str, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    class Counting(SFTTrainer):
        completion_tokens = 0  # completion tokens trained on: labels other than -100, after the shift

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                self.completion_tokens += int((inputs["labels"][:, 1:] != -100).sum())
            return super().compute_loss(model, inputs, *args, **kwargs)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = [json.loads(line) for line in Path(data).read_text().splitlines()]
    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-4,
        max_steps=steps, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=0,
        bf16=False, fp16=False, gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[],
        completion_only_loss=True, dataloader_num_workers=0, use_cpu=True, packing=mode == "packed",
        padding_free=mode == "padding-free", max_length=None if mode == "padding-free" else 512, disable_tqdm=True)
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_MODULES, task_type="CAUSAL_LM")
    trainer = Counting(model=model, args=args, train_dataset=Dataset.from_list(rows),
                       processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=peft_config)
    assert trainer.padding_free == (mode != "padded")
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    seconds = result.metrics["train_runtime"]
    return {"completion_tok_s": trainer.completion_tokens / seconds, "seconds": seconds, "losses": losses,
            "completion_tokens": trainer.completion_tokens}


def worker(spec: dict) -> None:
    """One training run in this (fresh) process; prints a RESULT line for the parent."""
    out = Path(tempfile.mkdtemp(prefix="run.", dir=spec["work"]))
    tool, mode = spec["trainer"].split(" ", 1)
    if tool == "llmcycle":
        result = run_llmcycle(spec["model"], spec["data"], spec["steps"], mode == "packed", out / "run")
    else:
        result = run_trl(spec["model"], spec["data"], spec["steps"], mode, out)
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(out, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)


def cpu_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores, from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def wait_for_idle(limit_s: int = 600) -> None:
    """Other jobs share this machine: wait (up to `limit_s`) until under a tenth of a core is busy for 2 s."""
    for waited in range(0, limit_s, 2):
        before = cpu_busy_seconds()
        time.sleep(2)
        if cpu_busy_seconds() - before < 0.2:
            return
        if not waited:
            print("  (waiting for other jobs to leave the CPU idle)", flush=True)
    print("  (the machine did not go idle; measuring anyway)", flush=True)


def launch(spec: dict) -> dict:
    wait_for_idle()
    busy, own, started = cpu_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env)
    process_s = time.time() - started  # the whole process: start-up, imports, loading, data, training, saving
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{spec['trainer']} ({spec['size']}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own_cpu = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
    # Share of the machine's cores that something other than this run kept busy meanwhile (0 = measured alone).
    other = (cpu_busy_seconds() - busy - own_cpu) / ((time.time() - started) * os.cpu_count())
    return json.loads(lines[-1][len("RESULT "):]) | {"other_cpu": max(other, 0.0), "process_s": process_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="dialogue,short")
    parser.add_argument("--sizes", default="tiny,30m")
    parser.add_argument("--trainers", default=",".join(TRAINERS))
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--steps-tiny", type=int, default=150)
    parser.add_argument("--steps-30m", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--retries", type=int, default=3, help="reruns of a run that shared the CPU with another job")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "llmcycle-sft-bench"))
    parser.add_argument("--json", help="also write every run's numbers to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    build(work, args.rows)
    trainers, best, runs = args.trainers.split(","), {}, []
    for shape in args.shapes.split(","):
        for size in args.sizes.split(","):
            for attempt in range(args.repeat):
                for trainer in trainers if attempt % 2 == 0 else trainers[::-1]:
                    result = measure(args, work, shape, size, trainer, attempt)
                    runs.append(result)
                    key = (f"{shape}/{size}", trainer)
                    if key not in best or result["completion_tok_s"] > best[key]["completion_tok_s"]:
                        best[key] = result
    print_table(best, [f"{shape}/{size}" for shape in args.shapes.split(",") for size in args.sizes.split(",")], trainers)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


def measure(args, work: Path, shape: str, size: str, trainer: str, attempt: int) -> dict:
    """One run in a fresh process; a run that shared the CPU with another job runs again."""
    spec = {"size": size, "trainer": trainer, "steps": getattr(args, f"steps_{size}"), "model": str(work / size),
            "data": str(work / f"train-{shape}.jsonl"), "work": str(work)}
    for _ in range(args.retries + 1):
        result = launch(spec) | {"shape": shape, "size": size, "trainer": trainer, "attempt": attempt}
        if result["other_cpu"] < 0.1:
            break
        print(f"  {shape}/{size} {trainer:16} shared the CPU ({result['other_cpu']:.0%} busy elsewhere): again", flush=True)
    print(f"  {shape}/{size} {trainer:16} run {attempt + 1}: {result['completion_tok_s']:8.0f} completion tok/s, "
          f"loop {result['seconds']:5.1f} s, process {result['process_s']:5.1f} s, {result['peak_mib']:5.0f} MiB, "
          f"loss {final_loss(result['losses']):.4f}, other CPU load {result['other_cpu']:.0%}", flush=True)
    return result


def print_table(best: dict, sizes: list[str], trainers: list[str]) -> None:
    modes = ("padded", "packed", "padding-free")
    print("\n| shape/size | trainer | completion tok/s | loop s | process s | peak MiB | final loss | "
          + " | ".join(f"vs trl {m}" for m in modes) + " | process vs trl padded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        trl = {m: best.get((size, f"trl {m}")) for m in modes}
        for trainer in (t for t in trainers if (size, t) in best):
            r = best[(size, trainer)]
            ratios = " | ".join(f"{r['completion_tok_s'] / b['completion_tok_s']:.2f}x" if b else "-" for b in trl.values())
            process = f"{trl['padded']['process_s'] / r['process_s']:.2f}x" if trl["padded"] else "-"
            print(f"| {size} | {trainer} | {r['completion_tok_s']:,.0f} | {r['seconds']:.1f} | {r['process_s']:.1f} | "
                  f"{r['peak_mib']:,.0f} | {final_loss(r['losses']):.4f} | {ratios} | {process} |")
    print()
    speed = lambda a, b: a["completion_tok_s"] / b["completion_tok_s"]  # noqa: E731
    loss = lambda a, b: final_loss(a["losses"]) / final_loss(b["losses"]) - 1  # noqa: E731
    for size in sizes:
        ours, trl = best.get((size, "llmcycle padded")), best.get((size, "trl padded"))
        if ours and trl:
            print(f"{size}: llmcycle padded / trl padded = {speed(ours, trl):.2f}x (target 1.2x: "
                  f"{'met' if speed(ours, trl) >= 1.2 else 'NOT met'}); final loss {loss(ours, trl):+.2%}")
            for other in (b for b in (trl, best.get((size, "trl padding-free"))) if b):  # same rows, same order
                gap = max(abs(a - b) / b for a, b in zip(ours["losses"], other["losses"]))
                print(f"{size}: per-step losses of llmcycle padded and {other['trainer']} differ by at most {gap:.1e} (relative)")
        ours, free = best.get((size, "llmcycle packed")), [best.get((size, f"trl {m}")) for m in ("packed", "padding-free")]
        if ours and any(free):
            fastest = max((b for b in free if b), key=lambda b: b["completion_tok_s"])
            print(f"{size}: llmcycle packed / fastest trl padding-free ({fastest['trainer']}) = {speed(ours, fastest):.2f}x (target "
                  f"1.0x: {'met' if speed(ours, fastest) >= 1.0 else 'NOT met'}); final loss vs trl packed "
                  f"{loss(ours, free[0]) if free[0] else float('nan'):+.2%}")


if __name__ == "__main__":
    main()
