"""Datasets, deterministic splits, partitioners and per-site data directories."""
