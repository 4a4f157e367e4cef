"""Alignment with human feedback: reward models, reward sources, PPO with a KL penalty, DPO."""
