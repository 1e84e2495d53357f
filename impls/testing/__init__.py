"""What tests, `ibp-check` and benchmarks share: inputs, strategies, tolerances, properties."""
