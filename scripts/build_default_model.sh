#!/usr/bin/env bash
# Rebuild llmcycle's embedded default model from nothing, offline, with llmcycle's own verbs:
# synthetic corpus -> span-corruption pre-training of a small T5 -> multi-task instruction tuning on the
# built-in tasks (dialogue summarisation held out) -> src/llmcycle/assets/default-model/.
# About half an hour on a 2-core CPU. Usage: bash scripts/build_default_model.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-build/default-model}
TARGET=src/llmcycle/assets/default-model
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1
llmcycle synth --task corpus --rows 8000 --seed 100 --out "$WORK/corpus.txt"
llmcycle pretrain --corpus "$WORK/corpus.txt" --arch t5 --layers 3 --hidden 128 --heads 4 --vocab-size 3000 \
    --max-length 128 --batch-size 32 --max-steps 120 --lr 3e-3 --seed 0 --out "$WORK/pretrained"
llmcycle synth --task instruct --rows 2000 --seed 101 --out "$WORK/instruct-train.jsonl"
llmcycle synth --task instruct --rows 200 --seed 102 --out "$WORK/instruct-test.jsonl"
llmcycle finetune --model "$WORK/pretrained/model" --data "$WORK/instruct-train.jsonl" --eval-data "$WORK/instruct-test.jsonl" \
    --method full --lr 1e-3 --epochs 2 --batch-size 32 --max-length 256 --warmup-steps 20 --seed 0 --out "$WORK/instruct"
llmcycle eval --model "$WORK/instruct" --data "$WORK/instruct-test.jsonl" --metrics rouge,exact_match \
    --max-new-tokens 32 --batch-size 32 --out "$WORK/instruct-eval.json"
rm -rf "$TARGET" && mkdir -p "$TARGET"
cp "$WORK"/instruct/model/* "$TARGET"/
cp "$WORK/instruct-eval.json" "$TARGET/eval.json"
echo "wrote $TARGET"
