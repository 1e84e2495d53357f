"""The accuracy reproduction behind `reproduce-accuracy` (bench/reproduce_accuracy.py): data,
configurations, the founding question's deliberately buggy head, per-framework runners, the shared
training loop and the report."""
