"""Judge: candidate against incumbent, offline (metrics, significance) and online
(interleaving, sequential tests), and the promotion policy."""
