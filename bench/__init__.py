"""Benchmarks, the accuracy reproduction and the GPU script."""
