"""Write an embedded model's MODEL_CARD.md from what its build recorded (and, given, what the quickstart measured).

    python scripts/model_card.py t5 build/embedded [--quickstart quickstart/metrics.json] [--build-seconds N]

Every number in the card is read from a file the build or the quickstart wrote: the pre-training and instruction
tuning runs' config.yaml and metrics.json, the held-out instruction eval, the quickstart's metrics.json. So the
card cannot drift from the model it describes; rerun this after a rebuild.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import yaml

from llmcycle.data.synthetic import INSTRUCT_MIX, mix_counts
from llmcycle.evaluate.induction import copy_losses

ARCH = {
    "t5": ("T5 (`T5ForConditionalGeneration`), an encoder-decoder", "`AutoModelForSeq2SeqLM`",
           "T5 span corruption (15% of each chunk's tokens masked in spans of mean length 3)"),
    "llama": ("Llama (`LlamaForCausalLM`), decoder-only", "`AutoModelForCausalLM`", "next-token prediction"),
}
LIMITS = {  # what each model did worst in the quickstart, before the mix held reading, rationales and copying
    "t5": "What it did worst before the rebuild was keep track of who did what: a tuned summary named the people in "
          "the dialogue but sometimes gave one person's line to another, and greedy decoding can loop on a sentence "
          "(the quickstart decodes with no_repeat_ngram_size 4).",
    "llama": "Before this build (copying warm-up, reading passages, rationales) it could not copy from its input: a "
             "tuned summary had the right shape with the wrong names (names_in_source 0.04 after the quickstart's full "
             "fine-tuning, 0.97 with this build). What it does worst is reading: asked about a passage, plain or in "
             "llmcycle's RAG layout, it mostly answers \"The text does not say.\" even when the passage holds the answer "
             "(exact match 0.21 on 120 held-out reading rows), so retrieval does not help it. Asked for steps, it "
             "copies a word problem's numbers into them and solves a quarter of two-step problems (none directly); "
             "most of its wrong answers are wrong sums and differences.",
}
NO_COPYING = ("It cannot copy: a random sequence repeated is hardly easier for it the second time, so names in its "
              "outputs come from what it was tuned on rather than from its input.")
MIX_PURPOSES = {  # what each part of the instruction mix is, and what it is there for
    "extract": "answer a question about a dialogue or a note with the fact it states",
    "classify": "the sentiment of a review",
    "rewrite": "rewrite a rude request politely",
    "topic": "the topic of a dialogue",
    "narrate": "one speaker's part in a dialogue in one sentence (the skill under summarisation, which stays held out)",
    "reading": "answer a question from a passage (documentation pages about invented software, short stories, tables "
               "written as text, encyclopedia entries about invented things) with the span that says it, or \"The text "
               "does not say.\" for the fifth it does not answer; 40% laid out exactly as `llmcycle rag ask` lays out "
               "retrieved passages, one to five of them. For retrieval: grounding answers in given text, and no made-up "
               "answer when the text lacks one. Its names are not those of the `docs-qa` task the quickstart tests "
               "retrieval on",
    "arithmetic-mix": "word problems of two and three steps, each twice: with the worked steps ending \"The answer is N.\" "
                      "when the prompt asks for them (\"Let's think step by step.\", or solved examples with steps, as "
                      "`llmcycle prompt --cot` asks), and \"The answer is N.\" alone when it does not. For chain-of-thought: "
                      "asking for steps is what makes the model take them",
    "copy": "repeat a random sequence, or give back a list named earlier in a text: copying from the context, which "
            "faithful names in summaries and answers from passages need",
}
QUICKSTART_ROWS = ("zero-shot", "one-shot", "few-shot", "full", "lora", "prompt-tuning", "lora+ppo", "dpo", "int8")


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def _interval(summary: dict) -> str:
    return f"{summary['mean']:.3f} [{summary['ci95'][0]:.3f}, {summary['ci95'][1]:.3f}]"


INFILL = {  # what text infilling is for each kind, and why the build has it
    "t5": ("BART's text infilling ({density:.0%} of each chunk's tokens masked in spans, each span one mask token; the "
           "decoder writes the whole chunk back)",
           "Span corruption alone left a model that wrote summaries of the right shape with the wrong names: its targets\n"
           "   are mostly not in its input, and it never learned to copy from it. Text infilling's targets mostly are."),
    "llama": ("text infilling for a decoder-only model (each row: the chunk with {density:.0%} of its tokens masked in "
              "spans, each span one <mask>, then EOS, then the chunk itself, the loss on the chunk)",
              "Next-token prediction alone left a model that could not copy: on a random sequence repeated twice, its loss\n"
              "   on the second copy was no lower than on the first, and its summaries had the right shape with the wrong names."),
}


def infill_step(work: Path, kind: str) -> str:
    """The continued pre-training on text infilling, as a numbered step, where the build ran one ('' if not)."""
    if not (work / kind / "infilled/metrics.json").exists():
        return ""
    run, cfg = _read(work / kind / "infilled/metrics.json"), _read(work / kind / "infilled/config.yaml")
    what, why = INFILL[kind]
    return f"""
3. `llmcycle pretrain --model <step 2's model> --objective text-infilling --max-length {cfg['max_length']} --epochs {cfg['epochs']} --lr {cfg['lr']}`:
   {what.format(density=cfg.get('noise_density') or 0.3)} for {run['steps']} steps, {run['tokens_seen']:,} tokens seen; loss {run['first_loss']:.2f} -> {run['final_loss']:.2f}; {run['wall_time_s'] / 60:.1f} minutes.
   {why}"""


def build_section(kind: str, work: Path, seconds: float | None, shared: bool) -> str:
    pre, pre_cfg = _read(work / kind / "pretrained/metrics.json"), _read(work / kind / "pretrained/config.yaml")
    tune, tune_cfg = _read(work / kind / "instruct/metrics.json"), _read(work / kind / "instruct/config.yaml")
    infill = infill_step(work, kind)
    trained = sum(_read(path)["wall_time_s"] for path in (work / kind).glob("*/metrics.json"))  # every training run's
    trained += pre.get("copy_warmup", {}).get("seconds", 0)
    # a build that reused an earlier run's pre-training took less than its steps did: say what the steps took
    total = f"{seconds / 60:.0f} minutes" if seconds and seconds >= trained else f"{trained / 60:.0f} minutes of training"
    after = 1 if infill else 0
    rows = sum(1 for _ in (work / "instruct-train.jsonl").open())
    return f"""## How it was made

`bash scripts/build_embedded_models.sh {kind}` rebuilds it from nothing, offline, with llmcycle's own verbs
({total} on this project's 2-core CPU{", shared with other jobs during this build" if shared else ""}; each step's time below):

1. `llmcycle synth --task corpus --rows 30000 --extra-documents 12000 --seed 100`: 30,000 synthetic documents
   (dialogues, narrative summaries of other scenes, product reviews, notes, requests), then 12,000 meant to make
   copying pay off: 8,000 in which a random sequence (words, made-up words, codes, names, numbers) comes back
   later, which only copying predicts, and 4,000 reading passages, whose made-up names recur; {pre['corpus_tokens']:,} tokens.
2. `llmcycle pretrain --arch {kind} --layers {pre_cfg['layers']} --hidden {pre_cfg['hidden']} --heads {pre_cfg['heads']} \
--vocab-size {pre_cfg['vocab_size']} --max-length {pre_cfg['max_length']} --batch-size {pre_cfg['batch_size']} --epochs {pre_cfg['epochs']} --lr {pre_cfg['lr']}{warmup_flag(pre_cfg)}`:
   a byte-level BPE tokenizer trained on the corpus,{warmup_text(pre) or " "}then {ARCH[kind][2]} for {pre['steps']} steps,
   {pre['tokens_seen']:,} tokens seen; loss {pre['first_loss']:.2f} -> {pre['final_loss']:.2f}; {pre['wall_time_s'] / 60:.1f} minutes.{infill}
{3 + after}. `llmcycle synth --task instruct --rows {rows} --seed 101`: multi-task instruction data, FLAN-style,
   several phrasings per task:
{mix_lines(rows)}
{4 + after}. `llmcycle finetune --method full --lr {tune_cfg['lr']} --epochs {tune_cfg['epochs']} --batch-size {tune_cfg['batch_size']} \
--max-length {tune_cfg['max_length']}{" --packing" if tune_cfg.get("packing") else ""}`: {tune['steps']} steps,
   {tune['wall_time_s'] / 60:.1f} minutes; validation loss {tune['eval_loss']:.3f} on 200 held-out instruction rows (seed 102).

Dialogue summarisation ("Summarize the following conversation") is never among its tasks: it is what the
quickstart fine-tunes it for, so that fine-tuning has something to add. The closest skill it was taught is
narrate (one speaker's part, one sentence); a summary needs every part, in order, with the insults first.
"""


def warmup_flag(cfg: dict) -> str:
    return f" --copy-warmup-steps {cfg['copy_warmup_steps']}" if cfg.get("copy_warmup_steps") else ""


def warmup_text(metrics: dict) -> str:
    """The copying warm-up's line (train/copy_warmup.py), from the pre-training run's record; '' without one."""
    warm = metrics.get("copy_warmup")
    if not warm:
        return ""
    return (f"\n   the copying warm-up ({warm['steps']} steps on random sequences each repeated, with targets for where a "
            f"previous-token\n   head and an induction head attend; copy ratio {warm['copy_ratio_before']:.2f} -> "
            f"{warm['copy_ratio_after']:.2f}; {warm['seconds'] / 60:.1f} minutes),\n   ")


def mix_lines(rows: int) -> str:
    """The instruction mix, one item a part: its share, its rows, what it is and what it is for."""
    counts = mix_counts(rows, INSTRUCT_MIX)
    items = [f"- {task} ({share}%, {counts[task]:,} rows): {MIX_PURPOSES[task]}." for task, share in INSTRUCT_MIX.items()]
    return "\n".join(textwrap.fill(item, width=112, initial_indent="   ", subsequent_indent="     ") for item in items)


def copying_sentence(folder: Path) -> tuple[str, bool]:
    """The repeated-random-sequence measurement of the model in `folder` (evaluate/induction.py), and whether it copies."""
    first, second = copy_losses(str(folder))
    ratio = second / first
    return (f"Copying: ratio {ratio:.2f} (well under 0.5 means the model copies): mean loss {second:.2f} nats on the "
            f"second copy of 16 random 40-token sequences, {first:.2f} on the first.", ratio < 0.5)


def eval_section(kind: str, work: Path, folder: Path) -> str:
    scores = _read(work / kind / "instruct-eval.json")
    copying, copies = copying_sentence(folder)
    text = (f"On 200 held-out instruction rows (`eval.json`, greedy, 32 new tokens, which cuts off longer worked steps): "
            f"ROUGE-L {_interval(scores['rougeL'])}, exact match {_interval(scores['exact_match'])}. It answers in the "
            "form each task asks for (a label, a span of a passage, a polite request, a sentence about a speaker, worked "
            "steps when asked) and often the right one. Its vocabulary and world are the synthetic data's: everyday "
            f"plans, shopping, complaints, reviews, made-up software and towns. {LIMITS[kind]} Do not use it for "
            "anything but learning and testing llmcycle.")
    copying = f"{copying} {'' if copies else NO_COPYING}".strip()
    return f"## What it can do\n\n{textwrap.fill(text, width=115)}\n\n{textwrap.fill(copying, width=115)}\n"


def quickstart_section(kind: str, path: Path) -> str:
    metrics = _read(path)[kind]
    rows = []
    for name in QUICKSTART_ROWS:
        entry = metrics.get(name)
        if entry and "rougeL" in entry:
            rows.append(f"| {name} | {_interval(entry['rougeL'])} | {entry['toxicity']['mean']:.3f} | "
                        f"{entry['repetition']['mean']:.0%} |")
    rag = " ".join(f"{name} {_interval(metrics[name]['exact_match'])};" for name in ("docs-ft", "rag", "docs-ft+rag") if name in metrics)
    text = f"Product documentation questions, exact match: {rag.rstrip(';')}.\n"
    cot = next((entry["chain_of_thought"] for entry in metrics.values() if entry.get("chain_of_thought")), None)
    if cot and "cot" in cot and "direct" in cot:
        change = cot["cot"]["accuracy"]["change"]
        consistency = f", self-consistency {cot['self-consistency']['accuracy']['mean']:.3f}" if "self-consistency" in cot else ""
        text += (f"\nWord problems ({cot['direct']['accuracy']['n']}, {cot['shots']} solved examples before each), accuracy of "
                 f"the answer: direct {cot['direct']['accuracy']['mean']:.3f}, with steps {cot['cot']['accuracy']['mean']:.3f} "
                 f"(paired change {change['absolute']:+.3f} [{change['ci95'][0]:+.3f}, {change['ci95'][1]:+.3f}]){consistency}.\n")
    return ("## In the quickstart\n\nDialogue summarisation (60 held-out rows), as `llmcycle quickstart` measured it "
            "(`metrics.json`, block `" + kind + "`; greedy decoding with the recipe's no_repeat_ngram_size for this model):\n\n| variant | ROUGE-L | toxicity | repeats a sentence 3+ times |\n|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n" + text)


def architecture_section(kind: str, folder: Path) -> str:
    config = _read(folder / "config.json")
    size = (folder / "model.safetensors").stat().st_size
    if kind == "t5":
        shape = (f"d_model {config['d_model']}, {config['num_layers']} encoder and {config['num_decoder_layers']} decoder blocks, "
                 f"{config['num_heads']} heads, gated-GELU feed-forward of {config['d_ff']}; relative positions")
    else:
        shape = (f"hidden {config['hidden_size']}, {config['num_hidden_layers']} blocks, {config['num_attention_heads']} heads "
                 f"({config['num_key_value_heads']} key-value heads), SwiGLU feed-forward of {config['intermediate_size']}; rotary positions, "
                 f"context {config['max_position_embeddings']}")
    return (f"## Architecture\n\n{ARCH[kind][0]}: {shape}; vocabulary {config['vocab_size']:,}. "
            f"{config.get('dtype', 'float32')} safetensors, {size / 2**20:.1f} MiB. Loads with plain "
            f"`transformers.{ARCH[kind][1].strip('`')}.from_pretrained` on this folder; in llmcycle, `--model embedded-{kind}`.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(ARCH))
    parser.add_argument("work", type=Path, help="the build's work folder (scripts/build_embedded_models.sh's WORK_DIR)")
    parser.add_argument("--quickstart", type=Path, help="a quickstart's metrics.json")
    parser.add_argument("--build-seconds", type=float, help="the whole build's wall time")
    parser.add_argument("--shared-cpu", action="store_true", help="other jobs shared the CPU during the build")
    args = parser.parse_args()
    folder = Path(__file__).parent.parent / "src/llmcycle/assets" / args.kind
    title = {"t5": "encoder-decoder (T5)", "llama": "decoder-only (Llama)"}[args.kind]
    parts = [f"# llmcycle embedded {title} instruct model\n\nA small {title} instruct model that llmcycle pre-trains and "
             "instruction-tunes itself, offline, so that the quickstart can show the whole lifecycle on a real pretrained "
             "model of each kind on a machine with no GPU and no internet. It is a toy: a few million parameters, trained "
             "for minutes on synthetic text.\n", build_section(args.kind, args.work, args.build_seconds, args.shared_cpu),
             eval_section(args.kind, args.work, folder)]
    if args.quickstart:
        parts.append(quickstart_section(args.kind, args.quickstart))
    parts.append(architecture_section(args.kind, folder))
    (folder / "MODEL_CARD.md").write_text("\n".join(parts))
    print(f"wrote {folder / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
