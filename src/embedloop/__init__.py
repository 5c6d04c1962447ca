"""embedloop: turn search interaction logs into a better embedding model, safely."""

__version__ = "0.1.0"
