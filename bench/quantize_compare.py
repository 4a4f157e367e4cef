"""What quantisation costs and saves on this machine: `llmcycle quantize --compare` on two models.

* embedded: the T5 instruct model that ships with llmcycle (2M parameters, trained, tied embeddings), on
  synthetic `instruct` rows of its own tasks, so quality means something;
* llama-30m: a Llama built from a config (8 layers, hidden 512, MLP 1376, vocab 8000; weights redrawn from
  N(0, 0.02)), where the linear layers hold 88% of the parameters, so sizes and speeds show what the formats do.
  Its outputs are not text worth scoring; `same as float32` (predictions identical to the float32 form's)
  is the quality measure there.

Every form is written to disk and loaded back (llmcycle.deploy.compare); the table gives each form against
float32 as ratios, with the planner's bytes per parameter beside the real ones.

Run: `python bench/quantize_compare.py [--rows 60] [--max-new-tokens 32] [--models embedded,llama-30m]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from llmcycle.console import out as console_out, print_table  # noqa: E402
from llmcycle.data.options import DataOptions  # noqa: E402
from llmcycle.deploy.compare import compare_quantized  # noqa: E402
from llmcycle.generate.engine import GenerationSettings  # noqa: E402
from llmcycle.outputs import write_jsonl  # noqa: E402


def llama_30m(folder: Path, texts: list[str]) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmcycle.train.scratch import train_tokenizer

    tokenizer = train_tokenizer(texts, 8000, append_eos=False)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, 0.02)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def agreement(out: Path, form: dict, reference: dict) -> str:
    mine = [json.loads(line)["prediction"] for line in (out / form["predictions"]).read_text().splitlines()]
    theirs = [json.loads(line)["prediction"] for line in (out / reference["predictions"]).read_text().splitlines()]
    return f"{sum(a == b for a, b in zip(mine, theirs))}/{len(mine)}"


def rows_for(name: str, result: dict, out: Path) -> list[tuple]:
    forms, rows = result["forms"], []
    base = forms["float32"]
    for form, entry in forms.items():
        rouge = entry["metrics"].get("rougeL", {})
        rows.append((
            name, form, f"{entry['size_on_disk_bytes'] / 2**20:.2f}", f"{base['size_on_disk_bytes'] / entry['size_on_disk_bytes']:.2f}x",
            f"{entry['bytes_per_param']:.3f} / " + ("-" if entry["planned_bytes_per_param"] is None else f"{entry['planned_bytes_per_param']:.3f}"),
            f"{entry['load_s']:.3f}",
            f"{entry['tokens_per_s']:.0f}", f"{entry['tokens_per_s'] / base['tokens_per_s']:.2f}x",
            f"{entry['peak_memory_bytes'] / 2**20:.1f}",
            f"{rouge.get('mean', 0):.3f} [{rouge['ci95'][0]:.3f}, {rouge['ci95'][1]:.3f}]" if rouge else "-",
            "-" if "change" not in rouge else f"{rouge['change']['absolute']:+.4f} [{rouge['change']['ci95'][0]:+.4f}, {rouge['change']['ci95'][1]:+.4f}]",
            agreement(out, entry, base),
        ))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--models", default="embedded,llama-30m")
    args = parser.parse_args()
    torch.manual_seed(0)
    from llmcycle.data.synthetic import generate

    rows = generate("instruct", args.rows, 7)
    table = []
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "test.jsonl"
        write_jsonl(data, rows)
        for name in args.models.split(","):
            model = "embedded" if name == "embedded" else llama_30m(Path(scratch) / name, [r["prompt"] + r["completion"] for r in generate("instruct", 2000, 8)])
            out = Path(scratch) / f"compare-{name}"
            settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=16)
            result = compare_quantized(model, DataOptions(str(data)), settings, ["rouge"], str(out), resamples=1000)
            table += rows_for(name, result, out)
    console_out.width = max(console_out.width, 200)  # the whole table on one line a row, for RESULTS.md
    print_table(f"quantised forms, {args.rows} rows, {args.max_new_tokens} new tokens, {torch.get_num_threads()} threads",
                ["model", "form", "MiB", "smaller", "bytes/param real / planned", "load s", "tokens/s", "speed vs fp32",
                 "peak MiB", "ROUGE-L [95%]", "change vs fp32, paired [95%]", "same as float32"], table)


if __name__ == "__main__":
    main()
