"""Datasets, incremental filtering and remapping, few-shot sampling, transforms."""
