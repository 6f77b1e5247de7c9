"""Benchmarks: `make bench` runs each; every one prints one JSON object (numbers in the README)."""
