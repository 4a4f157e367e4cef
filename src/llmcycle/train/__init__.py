"""Training: the fine-tuning and pre-training verbs, methods (full, LoRA, QLoRA, prompt and prefix tuning, selective), SFT data, checkpoints, distributed launch, models built from configs."""
