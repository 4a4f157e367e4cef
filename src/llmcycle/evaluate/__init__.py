"""Metrics (ROUGE, BLEU, exact match, toxicity, perplexity), bootstrap intervals and comparison tables."""

from .metrics import METRICS, MetricInput, parse_metrics, score
from .compare import compare, print_comparison
from .stats import bootstrap_summary

__all__ = ["METRICS", "MetricInput", "bootstrap_summary", "compare", "parse_metrics", "print_comparison", "score"]
