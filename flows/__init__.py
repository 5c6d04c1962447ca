"""Prefect flows: the pipeline as it reads on the whiteboard."""
