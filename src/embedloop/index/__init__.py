"""Index: vector indexes (the backend interface, FAISS, Milvus) and building one from a
corpus."""
