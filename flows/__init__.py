"""Prefect flows (the pipeline as it reads on the whiteboard), and the `embedloop` CLI
that runs them."""
