"""Result files -> DataFrames -> charts and reports.  Reads files only (no locust, no target_app)."""
