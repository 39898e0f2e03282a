"""TDN's benchmarks: ``make bench`` (``python -m bench``). Benchmarks print figures and record them
in docs/benchmarks.md; they are never part of ``make test`` and never assert timings.

Each benchmark module exposes ``NAME``, ``TITLE`` and ``run(quick: bool) -> str``, returning the
Markdown section it measured (medians and ratios measured side by side in one run, because these
machines are shared and noisy).
"""
