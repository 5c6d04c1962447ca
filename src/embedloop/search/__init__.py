"""Search: a model and an index answering queries, and scoring rankings against judgements."""
