"""Datasets, the format of a user's own data file, deterministic splits, partitioners and per-site data directories."""
