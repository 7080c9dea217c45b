"""The benchmark of issue 3: ``make bench`` (or ``python -m bench.run``); see ``bench/run.py``."""
