"""Reviewing finished runs: the results table (table), the best run of a sweep (best_run)."""
