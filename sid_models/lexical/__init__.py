"""Lexical retrieval: BM25 over the item texts, with stemming (the baseline users already run)."""
