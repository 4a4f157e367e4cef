"""Planning before renting GPUs: memory per GPU for a method and strategy, compute-optimal sizes."""
