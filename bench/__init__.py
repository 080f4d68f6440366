"""Benchmarks of p2pchat: room dissemination (flooding vs. the naive design), churn, and the
registry's capacity. Each is ``python -m bench.NAME``; see ``bench/README.md``."""
