"""Scaling-law and ablation harness for Kimi-K2-style mixture-of-experts language models."""

__version__ = "0.1.0"
