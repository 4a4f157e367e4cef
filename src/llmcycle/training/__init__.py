"""Instruction fine-tuning: methods (full, LoRA, QLoRA, prompt and prefix tuning, selective), data, checkpoints."""
