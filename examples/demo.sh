#!/usr/bin/env bash
# The foundation stages end to end, offline: build a small T5 from a config with a tokenizer trained on the
# example dialogues, prompt it zero/one/few-shot, and evaluate. The model is untrained, so its scores are near
# zero; the point is the pipeline. (The embedded pretrained default model and `llmcycle quickstart` come next.)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-out}
rm -rf "$OUT" && mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
llmcycle init-model --arch t5 --corpus examples/data/dialogues-train.jsonl --out "$OUT/model" --layers 2 --hidden 64
llmcycle generate --model "$OUT/model" --prompt "Summarize the following conversation. #Person1#: Hi Ben! Summary:" --max-new-tokens 12
llmcycle prompt --model "$OUT/model" --data examples/data/dialogues-test.jsonl --shot-data examples/data/dialogues-train.jsonl \
    --shots 0,1,3 --max-new-tokens 24 --out "$OUT/preds.jsonl" --metrics-out "$OUT/icl-metrics.json"
llmcycle eval --predictions "$OUT/preds.0-shot.jsonl" --predictions "$OUT/preds.3-shot.jsonl" \
    --metrics rouge,bleu,toxicity --out "$OUT/metrics.json"
llmcycle eval --model "$OUT/model" --data examples/data/dialogues-test.jsonl --metrics rouge,perplexity --max-new-tokens 24
echo "outputs in $OUT/"
