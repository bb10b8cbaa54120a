"""The project's benchmark: ``python -m bench`` (``make bench``), ``--quick`` for a short run.

It measures the collector against the legacy MOR algorithm and against the raw
AMI floor, many collectors on one database, and the widget in-process and under
gunicorn; see docs/PERFORMANCE.md for the method and the latest figures.
"""
