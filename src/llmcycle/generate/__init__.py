"""Generation: the batched engine, prompting with shots, and predictions for data files."""
