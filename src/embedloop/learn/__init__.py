"""Learn: clicks turned into training pairs (position bias, hard negatives) and the
fine-tune."""
