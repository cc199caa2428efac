"""Benchmarks and checks beside the book: the speed harness, sweeps, the GPU check.

Run each from the repository root as a module: `python -m benchmarks.NAME`.
"""
