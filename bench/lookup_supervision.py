"""Experiment (issue 22): can a decoder-only model learn to look a value up by its key when one head is told where to look?

`bench/reading_probe.py` found that the embedded models copy but cannot pick a value by a key several tokens long,
which reading and RAG need. This script tunes a copy of a model on the probe's lookup lists (other seeds) with the
language-model loss on the value plus one more term: the cross-entropy of one head's attention, at the last prompt
position, on the value's first token in the list. It supervises the lookup the way train/copy_warmup.py supervises
induction. Half the rows end in "Question: What is K?\\nAnswer:", half in the key and a colon. `--gather N` also
points layer 0's heads 0..N-1 at the tokens 1..N back; `--data` takes reading rows instead of lists. Then run
`python bench/reading_probe.py --model OUT` and read its lookup columns.

Run: `python bench/lookup_supervision.py --model embedded-llama --out /tmp/lookup --steps 600 --layer 5`
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from reading_probe import lookup_rows

from llmcycle.models import ModelOptions


def encode(tokenizer, prompt: str, answer: str, start: int) -> tuple[list[int], list[int], int]:
    """Prompt ids, answer ids (with EOS), and the prompt token holding character `start` (-1 for none: no attention
    term for this row)."""
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    target = next((i for i, (first, last) in enumerate(encoded["offset_mapping"]) if first <= start < last), -1)
    return encoded["input_ids"], tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id], target


def lookup_example(tokenizer, row: dict, form: str) -> tuple[list[int], list[int], int]:
    """A lookup list asked in `form`: the head is pointed at the asked value's first character in the list."""
    prompt = row[form]
    line = f"{row['key']}: {row['answer']}"
    start = ("\n" + prompt).index("\n" + line) + len(row["key"]) + 2  # a whole line: keys are distinct
    return encode(tokenizer, prompt, row["answer"], start)


def reading_example(tokenizer, row: dict) -> tuple[list[int], list[int], int]:
    """A prompt/completion row: the head is pointed at the first place the completion appears in the prompt (none
    for an unanswerable question, whose completion is not in the passage)."""
    start = row["prompt"].find(row["completion"]) if row["completion"] else -1
    return encode(tokenizer, row["prompt"], row["completion"], start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded-llama")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--layer", type=int, default=5, help="the layer whose head 0 is supervised")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--attention-weight", type=float, default=1.0, help="0: the same training without supervision")
    parser.add_argument("--data", help="prompt/completion JSONL rows instead of lookup lists (reading rows): the head is "
                                       "supervised onto the first place the completion appears in the prompt")
    parser.add_argument("--gather", type=int, default=0,
                        help="also supervise layer 0's heads 0..N-1 to attend N tokens back (1, 2, 3...), so that a "
                             "position can hold the key's tokens before it")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = ModelOptions(args.model).load()
    model, tokenizer = loaded.model, loaded.tokenizer
    model.set_attn_implementation("eager")  # attention probabilities come from the eager path only
    rng = random.Random(0)
    if args.data:
        lines = Path(args.data).read_text().splitlines()
        rows = [reading_example(tokenizer, json.loads(line)) for line in lines if line.strip()]
    else:
        rows = [lookup_example(tokenizer, row, rng.choice(["question", "induction"])) for row in lookup_rows(20000, 101)]
    window = loaded.context_window or 512
    rows = [row for row in rows if len(row[0]) + len(row[1]) <= window]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    model.train()
    started = time.perf_counter()
    pad = tokenizer.pad_token_id or 0
    for step in range(args.steps):
        first = step * args.batch_size % len(rows)
        batch = rows[first : first + args.batch_size]
        width = max(len(ids) + len(answer) for ids, answer, _ in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for n, (prompt, answer, _) in enumerate(batch):
            ids[n, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            labels[n, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer)
            mask[n, : len(prompt) + len(answer)] = 1
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 20)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, output_attentions=True)
        attention = out.attentions[args.layer][:, 0]  # (rows, queries, keys) of head 0
        queries = torch.tensor([len(prompt) - 1 for prompt, _, _ in batch])
        keys = torch.tensor([target for _, _, target in batch])
        found = keys >= 0
        # rows with no target (an unanswerable question) add no attention term; a batch of only those adds 0
        pointed = attention[torch.arange(len(batch))[found], queries[found], keys[found]]
        look = -torch.log(pointed + 1e-9).mean() if found.any() else torch.zeros(())
        for head in range(args.gather):  # head h of layer 0 attends h + 1 tokens back, on real tokens only
            back = head + 1
            row, position = mask[:, back:].nonzero(as_tuple=True)
            gathered = out.attentions[0][row, head, position + back, position]
            look = look + -torch.log(gathered + 1e-9).mean()
        (out.loss + args.attention_weight * look).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: value loss {out.loss.item():.3f}, attention loss {look.item():.3f}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    model.set_attn_implementation("sdpa")
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out}; now: python bench/reading_probe.py --model {args.out}")


if __name__ == "__main__":
    main()
