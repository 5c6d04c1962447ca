"""Models: base models by name or folder, the multilingual one, encoding (precision,
devices) and exported runtimes."""
