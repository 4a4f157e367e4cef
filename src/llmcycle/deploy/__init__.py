"""Deployment: merge adapters into weights, quantise, serve."""
