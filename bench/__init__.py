"""The benchmark (``make bench``: ``bench/run.py``) and the load test (``make loadtest``: ``bench/loadtest.py``)."""
