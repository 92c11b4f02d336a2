"""Runs as MLflow records: where they are logged, what a run logs, runs as tables."""
