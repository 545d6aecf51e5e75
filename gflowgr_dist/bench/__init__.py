"""Benchmarks that print our path and the standard one side by side, measured in one run."""
