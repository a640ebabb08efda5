"""Datasets: the canonical schema, loaders for real formats and the synthetic world."""
