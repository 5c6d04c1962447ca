"""Ingest: interaction logs read (NDJSON, CSV, Parquet, native formats) since the last run,
validated, and the ledger of what was consumed; the corpus."""
