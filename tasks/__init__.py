"""Thin Prefect tasks, one per pipeline stage, around the pure `embedloop` library."""
