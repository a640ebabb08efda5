"""Evaluation of runs against the real actions: metrics, the report and comparison tables, the
forecast after the warm-up, intervention effects, and their plots (``plots``)."""
