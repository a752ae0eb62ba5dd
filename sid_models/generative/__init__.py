"""Generative retrieval (DESIGN.md Stage 3).

- `model.py`: `GenerativeConfig`, `Seq2SeqRetriever` (pre-LN encoder-decoder, tied SID output).
- `vocab.py`: `SidVocab`, SID codes <-> decoder tokens.
- `data.py`: SFT examples (graded query -> SID, item text -> SID indexing, mixed per epoch).
- `train.py`: the SFT objective, trained by the shared loop (`sid_models.shared.training`);
  `python -m sid_models.generative.train`.
- `trie.py`: tensorised SID trie, batched constrained beam search, reference dict-trie constraint.
- `retriever.py`: `load_retriever(...)` -> `.search(queries, k)`.
- `stage.py`: the `sft_checkpoint` stage and its checks.
"""
