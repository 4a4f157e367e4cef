"""Planner against real sharding: the model states each process holds under DDP and FSDP, counted from tensors.

`llmcycle plan memory --gpus G --strategy ddp|fsdp` divides weights, gradients and optimizer states as the ZeRO
paper does. This runs the same training setups on 2 CPU processes (gloo) with llmcycle's own wrapping
(`training.distributed`: torch DDP, or FSDP2 with each transformer block a unit), takes one AdamW step, and
counts the bytes of the tensors each process then holds: its local shard of every parameter, of every gradient
and of every optimizer-state tensor (DTensors count their local part). Those are compared with the planner's
per-GPU weights, gradients and optimizer states for the same model (read from its config), method and strategy,
in fp32 (4 bytes a weight, 4 a gradient, 8 of AdamW state: no master copy).

Run: `python bench/plan_sharding.py [--layers 4 --hidden 256 --vocab 8000]`; it starts its own 2 processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this process holds of `tensor` (its shard, for an FSDP DTensor)."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def held_states(model, optimizer) -> dict[str, int]:
    parameters = {id(p): p for p in model.parameters()}.values()  # tied weights once
    trained = [p for p in parameters if p.requires_grad]
    return {
        "weights": sum(local_bytes(p) for p in parameters),
        "gradients": sum(local_bytes(p.grad) for p in trained if p.grad is not None),
        "optimizer": sum(local_bytes(v) for state in optimizer.state.values() for v in state.values()
                         if isinstance(v, torch.Tensor) and v.dim() > 0),  # AdamW's step counters are scalars
    }


def build(folder: Path, layers: int, hidden: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                         max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return model


def worker(args) -> None:
    import peft

    from llmcycle.train.distributed import Distributed

    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    results = []
    for strategy in ("ddp", "fsdp"):
        for method in ("full", "lora"):
            model = build(Path(args.folder) / f"{strategy}-{method}", args.layers, args.hidden, args.vocab)
            if method == "lora":  # the planner's LoRA default for Llama: peft's q_proj and v_proj
                model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
            dist = Distributed(world, rank, rank, strategy)
            model = dist.wrap(model)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            ids = torch.randint(0, args.vocab, (2, 64))
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            results.append({"strategy": strategy, "method": method, "rank": rank, **held_states(model, optimizer)})
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, results)
    if rank == 0:
        Path(args.json).write_text(json.dumps([r for part in gathered for r in part]))
    torch.distributed.destroy_process_group()


def report(measured: list[dict], folder: Path) -> None:
    from llmcycle.plan.memory import TrainingSetup, plan_memory, shape_from_model

    print("| strategy | method | state | planned per process (MB) | held, process 0 / 1 (MB) | held / planned |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for strategy in ("ddp", "fsdp"):
        for method in ("full", "lora"):
            shape = shape_from_model(str(folder / f"{strategy}-{method}"))
            plan = plan_memory(shape, TrainingSetup(method=method, precision="fp32", gpus=2, strategy=strategy))
            rows = sorted((r for r in measured if r["strategy"] == strategy and r["method"] == method), key=lambda r: r["rank"])
            for state, planned_gb in (("weights", plan.weights_gb), ("gradients", plan.gradients_gb), ("optimizer", plan.optimizer_gb)):
                held = [r[state] / 1e6 for r in rows]
                ratio = max(held) / (planned_gb * 1e3)
                worst = max(worst, abs(ratio - 1))
                print(f"| {strategy} | {method} | {state} | {planned_gb * 1e3:,.2f} | "
                      f"{' / '.join(f'{h:,.2f}' for h in held)} | {ratio:.3f} |")
    print(f"\nlargest gap between a process's held states and the plan: {worst:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="plan-sharding-") as folder:
        results = Path(folder) / "held.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
                   "--worker", "--folder", folder, "--json", str(results), "--layers", str(args.layers),
                   "--hidden", str(args.hidden), "--vocab", str(args.vocab)]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
        report(json.loads(results.read_text()), Path(folder))


if __name__ == "__main__":
    main()
