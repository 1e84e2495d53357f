"""What tests, `ibp-check` and benchmarks share: input generators, strategies, tolerances, properties."""
