"""Evaluation: labellers and metrics that compare simulated populations with real ones."""
