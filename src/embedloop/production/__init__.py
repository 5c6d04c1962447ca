"""Production: the model registry, the champion and its live index, and the run lock."""
