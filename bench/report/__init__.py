"""Turn results/bench-<device>.json into results/BENCHMARKS.md, its plots and the headline
targets of docs/benchmarks.md.

    python -m bench.report [--results results/] [--document docs/benchmarks.md]

CPU numbers are shown only as ratios between measurements of the same run (absolute CPU times
say more about the machine than the method); a GPU run's absolute times are shown with the card.

Modules, each one step: `results` (reading and querying a results file), `targets` (the
project's targets and the recommended default), `tables` (Markdown tables), `plots` (PNG), and
`document` (BENCHMARKS.md, the headline block, the command line).
"""

from bench.report.document import TARGETS_BLOCK, TARGETS_PAGE, main, write_report

__all__ = ["TARGETS_BLOCK", "TARGETS_PAGE", "main", "write_report"]
