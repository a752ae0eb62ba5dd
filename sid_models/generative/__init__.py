"""Generative retrieval (DESIGN.md Stage 3).

- `model.py`: `GenerativeConfig`, `Seq2SeqRetriever` (pre-LN encoder-decoder, tied SID output).
- `vocab.py`: `SidVocab`, SID codes <-> decoder tokens.
- `data.py`: SFT examples (graded query -> SID, item text -> SID indexing, mixed per epoch).
- `train.py`: generic train loop (AdamW, warm-up + cosine, clipping, bf16 on CUDA, DDP via
  torchrun, exact resume, MLflow) and the SFT objective; `python -m sid_models.generative.train`.
- `trie.py`: tensorised SID trie, batched constrained beam search, reference dict-trie constraint.
- `retriever.py`: `load_retriever(...)` -> `.search(queries, k)`.
- `stage.py`: the `sft_checkpoint` stage and its checks.
"""
