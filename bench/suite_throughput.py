"""Multiple-choice suite scoring: llmcycle's native engine against lm-evaluation-harness on the same model and items.

    .venv/bin/python bench/suite_throughput.py [--items 200] [--arch gpt2,t5] [--shots 0] [--batch-size 8] [--layers 2 --hidden 64] [--scoring letter]

Builds tiny models from configs (tests/conftest.py's `build`), writes a synthetic suite, scores it with
`llmcycle.evaluate.benchmark` in this process, and with lm-eval's HFLM (same model folder, a local JSON task)
in lm-eval's side venv (`bash /work/shared/peers/venv-lm-eval.sh` builds it; set LM_EVAL_PYTHON to another).
Prints items/s of both (lm-eval's counted inside HFLM.loglikelihood, its scoring proper, and over all of
simple_evaluate), the ratio, and how many items got the same pick.

`python bench/suite_throughput.py peer MODEL_DIR[,..] BACKEND[,..] SUITE.jsonl SHOTS BATCH OUT.json [SHOTS.jsonl|- [letter]]` is the peer half,
run with lm-eval's python: it scores SUITE with HFLM and writes per-item log-likelihoods, picks and seconds.
The tests (tests/test_suites.py) use it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEER_SCRIPT = Path(__file__).resolve()
VENV_SCRIPT = Path("/work/shared/peers/venv-lm-eval.sh")


def peer_python() -> str | None:
    """lm-eval's python: LM_EVAL_PYTHON, or the side venv if it was built; None when neither exists."""
    explicit = os.environ.get("LM_EVAL_PYTHON")
    if explicit:
        return explicit if Path(explicit).exists() else None
    default = Path(os.environ.get("PEERS_HOME", "/tmp/llmcycle-peers")) / "lm-eval"
    return str(default / "bin" / "python") if (default / "ok").is_file() else None


LETTER_TEMPLATE = {  # lm-eval's mmlu (default) layout, for 4-choice rows with a subject
    "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
    "doc_to_choice": ["A", "B", "C", "D"],
    "description": "The following are multiple choice questions (with answers) about {{subject.replace('_', ' ')}}.\n\n",
}


def task_config(suite: str, shots: int, shot_data: str | None, letter: bool = False) -> dict:
    """A local JSON task in lm-eval's multiple_choice convention: context = question, choices = `choices`
    (with `letter`, lm-eval's mmlu layout and the letters scored).

    Shots come from `shot_data` in file order (lm-eval's first_n sampler), as llmcycle takes them from --shot-data.
    """
    files = {"test": suite, **({"dev": shot_data} if shot_data else {})}
    return {**_choice_task(files, shots, shot_data), **(LETTER_TEMPLATE if letter else {})}


def _choice_task(files: dict, shots: int, shot_data: str | None) -> dict:
    return {
        "task": "llmcycle_suite", "dataset_path": "json", "dataset_kwargs": {"data_files": files},
        "test_split": "test", "fewshot_split": "dev" if shot_data else "test", "fewshot_config": {"sampler": "first_n"},
        "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}", "num_fewshot": shots, "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }


def run_peer(model_dirs: str, backends: str, suite: str, shots: int, batch_size: int, out: str, shot_data: str | None,
             letter: bool = False) -> None:
    """Runs inside lm-eval's venv: per-item log-likelihoods and picks from HFLM, and the seconds it took, for each
    of the comma-separated models (one process, so lm-eval is imported once)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = [_peer_run(model_dir, backend, task_config(suite, shots, shot_data, letter), batch_size)
            for model_dir, backend in zip(model_dirs.split(","), backends.split(","))]
    Path(out).write_text(json.dumps(runs))


def _peer_run(model_dir: str, backend: str, task: dict, batch_size: int) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    model = HFLM(pretrained=model_dir, backend=backend, batch_size=batch_size, device="cpu", dtype="float32")
    scoring = []  # seconds inside HFLM.loglikelihood: the scoring itself, without task and dataset set-up
    original = model.loglikelihood

    def timed(*args, **kwargs):
        began = time.perf_counter()
        result = original(*args, **kwargs)
        scoring.append(time.perf_counter() - began)
        return result

    model.loglikelihood = timed
    started = time.perf_counter()
    results = lm_eval.simple_evaluate(model=model, tasks=[task], log_samples=True, random_seed=0,
                                      numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    seconds = time.perf_counter() - started
    samples = sorted(results["samples"]["llmcycle_suite"], key=lambda s: s["doc_id"])
    items = [{"doc_id": s["doc_id"], "context": s["arguments"][0][0], "loglikelihoods": [float(r[0]) for r in s["filtered_resps"]]}
             for s in samples]
    metrics = results["results"]["llmcycle_suite"]
    return {"items": items, "seconds": sum(scoring), "total_seconds": seconds, "acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"]}


def peer_scores(python: str, model_dir: str, backend: str, suite: str, shots: int = 0, batch_size: int = 8,
                shot_data: str | None = None, letter: bool = False) -> dict | list[dict]:
    """Run the peer half in lm-eval's venv and read what it wrote: one model's scores, or with comma-separated
    model folders and backends, a list of them."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "peer.json"
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(Path(folder) / "cache")}
        args = [python, str(PEER_SCRIPT), "peer", model_dir, backend, suite, str(shots), str(batch_size), str(out),
                shot_data or "-", "letter" if letter else "choice"]
        done = subprocess.run(args, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"lm-eval failed ({done.returncode}):\n{done.stderr[-3000:]}")
        runs = json.loads(out.read_text())
        return runs if "," in model_dir else runs[0]


def suite_rows(count: int) -> list[dict]:
    """Questions about short dialogues, 4 choices each, the right one varying."""
    names, tasks = ["Amy", "Ben", "Carla", "Dev", "Elena", "Farid"], ["book a table", "fix the printer", "plan a trip", "buy a present"]
    rows = []
    for i in range(count):
        a, b, task = names[i % 6], names[(i * 5 + 1) % 6], tasks[i % 4]
        question = f"{a} and {b}: can we {task} on day {i}? Who wants to {task}?"
        rows.append({"question": question, "choices": [a, b, f"{a} and {b}", "nobody at all"], "answer": i % 4, "subject": "general_knowledge"})
    return rows


def native_scores(model_dir: str, suite: str, shots: int, batch_size: int, shot_data: str | None = None,
                  scoring: str = "choice") -> tuple[list, float]:
    from llmcycle.evaluate.benchmark import load_suite, pick_shots, score_model
    from llmcycle.models import ModelOptions

    loaded = ModelOptions(model_dir, dtype="float32").load()
    data = load_suite(suite, shot_data)
    started = time.perf_counter()
    scores = score_model(loaded, data, pick_shots(data, shots, 0), scoring, batch_size)
    return scores.loglikelihoods, time.perf_counter() - started


def main() -> None:
    import argparse

    import numpy as np

    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--arch", default="gpt2,t5")
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--scoring", choices=["choice", "letter"], default="choice")
    args = parser.parse_args()
    python = peer_python()
    if python is None:
        sys.exit(f"no lm-eval venv: run `bash {VENV_SCRIPT}` first, or set LM_EVAL_PYTHON")
    sys.path.insert(0, str(PEER_SCRIPT.parent.parent / "tests"))
    from conftest import build

    with tempfile.TemporaryDirectory() as folder:
        suite = Path(folder) / "suite.jsonl"
        suite.write_text("".join(json.dumps(r) + "\n" for r in suite_rows(args.items)))
        for arch in args.arch.split(","):
            model_dir = str(build(arch, Path(folder) / arch, layers=args.layers, hidden=args.hidden))
            shot_data = str(suite) if args.shots else None  # shots in file order from the same rows, as the peer's first_n
            ours, our_seconds = native_scores(model_dir, str(suite), args.shots, args.batch_size, shot_data, args.scoring)
            peer = peer_scores(python, model_dir, "seq2seq" if arch in ("t5", "bart") else "causal", str(suite), args.shots,
                               args.batch_size, shot_data, args.scoring == "letter")
            same = sum(int(np.argmax(o)) == int(np.argmax(p["loglikelihoods"])) for o, p in zip(ours, peer["items"]))
            print(f"{arch} ({args.layers} layers, hidden {args.hidden}): {args.items} items, {args.shots}-shot, {args.scoring} scoring, batch {args.batch_size}: llmcycle {args.items / our_seconds:.1f} items/s, "
                  f"lm-eval {args.items / peer['seconds']:.1f} items/s in HFLM.loglikelihood "
                  f"({args.items / peer['total_seconds']:.1f} with simple_evaluate's set-up); "
                  f"ratio {peer['seconds'] / our_seconds:.2f}x; same pick {same}/{args.items}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "peer":
        model_dir, backend, suite, shots, batch, out = sys.argv[2:8]
        shot_file = sys.argv[8] if len(sys.argv) > 8 and sys.argv[8] != "-" else None
        run_peer(model_dir, backend, suite, int(shots), int(batch), out, shot_file, len(sys.argv) > 9 and sys.argv[9] == "letter")
    else:
        main()
