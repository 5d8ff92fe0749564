"""Benchmark suites for finechain; run ``python -m benchmarks --help``."""
