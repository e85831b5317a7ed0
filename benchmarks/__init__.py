"""Benchmarks (``make bench``): figures for BENCHMARKS.md, measured, not asserted as tests."""
