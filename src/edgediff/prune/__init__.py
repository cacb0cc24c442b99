"""Structured pruning of denoisers (see README.md)."""
