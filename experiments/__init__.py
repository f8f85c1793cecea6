"""Benchmarks, models, metrics, the shared training loop and the table / figure scripts."""
