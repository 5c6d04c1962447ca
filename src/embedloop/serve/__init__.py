"""Serve: the search service over HTTP and its interleaved sessions."""
