"""Kavier-OpenDC: a cache-aware LLM inference simulator co-simulated with OpenDC."""

__version__ = "0.1.0"
