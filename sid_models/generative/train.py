"""SFT of the generative retriever: the graded sequence NLL of query → SID (and of the
indexing views), trained by the shared loop of `sid_models.shared.training` (DDP, exact
resume, MLflow).

Command line (the same under torchrun):
  python -m sid_models.generative.train --prepared P --sids S --out O [--variant tiger]
         [--overrides '{"sft": {"steps": 10}}']
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import tracking
from ..data.schema import PreparedDataset
from ..quantize.table import resolve_variant
from ..sci.stage import ITEM_VIEW_FILE as SCI_ITEM_VIEW_FILE, QUERIES_FILE as SCI_QUERIES_FILE, QUERY_VIEW_FILE
from ..shared.training import (DistContext, LoopConfig, cli_params, fingerprint, run_distributed, train_loop,
                               training_cli)
from .data import SftDataset, SftTables, read_sid_table, vocab_for
from .distill import DistillationConfig, SciTeacher, distillation_loss
from .borrowed import BorrowConfig
from .inputs import EncoderReader
from ..text.views import ViewConfig
from .model import GenerativeConfig, Seq2SeqRetriever, init_encoder_embeddings, save_model
from .vocab import PAD

DATA_FILE = "sft_data.json"      # what the model trained on: retrieval pairs (judged + lent), indexing per epoch
# the query vector an indexing view reads (params sft.indexing_query_vector): f_q of its item's text, or of its own
INDEXING_QUERY_VECTORS = ("title", "view")


def sft_loss(model: torch.nn.Module, batch: dict, distillation_weight: float) -> tuple[torch.Tensor, dict]:
    """L = (1/N) Σ_i w_i Σ_t −log p(y_it | y_i<t, x_i) + λ L_T: graded-weight sequence NLL over the
    SID tokens and EOS of each target (PAD positions excluded), averaged over the N examples, plus
    λ = `distillation_weight` times the SCI teacher's cross-entropy L_T (`distill.distillation_loss`)
    when the batch carries the teacher's targets."""
    logits, _ = model(batch["inputs"], batch["attention_mask"], batch["decoder_input_ids"],
                      batch.get("query_vectors"))
    targets = batch["targets"]
    token_nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=PAD,
                                reduction="none").view_as(targets)
    loss = (batch["weight"] * token_nll.sum(dim=1)).mean()
    real = targets != PAD
    accuracy = ((logits.argmax(dim=-1) == targets) & real).sum().float() / real.sum().clamp(min=1)
    figures = {"token_accuracy": accuracy.detach()}
    if "teacher" in batch:
        distillation = distillation_loss(logits, batch["teacher"])
        loss = loss + distillation_weight * distillation
        figures["distillation"] = distillation.detach()
    return loss, figures


def sid_digest(table) -> str:
    """sha256 of a SID table's (item_id, sid) pairs."""
    return fingerprint([[str(item), [int(code) for code in sid]] for item, sid in zip(table["item_id"], table["sid"])])


def model_config(params: dict, vocab_size: int, max_dec_len: int, query_vector_dim: int = 0) -> GenerativeConfig:
    """The config of the preset `generative.preset` names, reading `generative.encoder`, with the
    decoder sized to the SIDs and the query-vector memory position `query_vector_dim` wide (0: none)."""
    generative = params["generative"]
    preset = generative["preset"]
    if preset not in generative["presets"]:
        raise ValueError(f"generative.preset {preset!r} not in presets {sorted(generative['presets'])}")
    values = dict(generative["presets"][preset]["model"])
    return GenerativeConfig.from_dict({**values, "encoder": generative["encoder"],
                                       "tuned_layers": int(generative["minilm_tuned_layers"]),
                                       "dec_vocab_size": vocab_size, "max_dec_len": max_dec_len,
                                       "query_vector_dim": query_vector_dim})


def loop_config(params: dict) -> LoopConfig:
    generative = params["generative"]
    section = {**params["sft"], **generative["presets"][generative["preset"]]["sft"]}
    return LoopConfig.from_params(section, seed=int(params["seed"]))


def query_tower_encoder(params: dict, towers_folder: str | Path, progress: bool) -> Callable[[list[str]], np.ndarray]:
    """Texts -> f_q through the query tower of the sci_towers artifact `towers_folder` (MiniLM sentence
    vectors cached by content hash under params text.cache_dir)."""
    from ..sci.towers import load_towers
    from ..text.encoder import TextEncoder

    towers = load_towers(towers_folder)
    sentences = TextEncoder.from_params(params["text"], progress=progress)

    def sentence_vectors(texts: list[str]) -> np.ndarray:
        return sentences.encode(texts, "SFT indexing views")

    def encode(texts: list[str]) -> np.ndarray:
        return towers.encode_query_texts(texts, sentence_vectors)
    return encode


# the last out-of-fold result by what it was computed from: the models of one SFT stage (the shipped one and
# sft.baselines) share one training of the fold towers; one entry, so the process holds one set of vectors
_LAST_OUT_OF_FOLD: dict[str, tuple[np.ndarray, dict]] = {}


def out_of_fold_vectors(params: dict, prepared: PreparedDataset, query_vectors: np.ndarray, towers_folder: Path,
                        progress: bool) -> tuple[np.ndarray, dict]:
    """The f_q of every query the model reads: the sci_towers artifact's, or with `sft.query_vector_folds`
    k >= 2 each training query's from towers trained without its fold (sci/out_of_fold.py), and the folds' figures."""
    import logging

    from ..sci.out_of_fold import out_of_fold_query_vectors
    from ..sci.towers import load_towers
    from ..text.encoder import TextEncoder

    folds = int(params["sft"]["query_vector_folds"])
    if folds == 0:
        return query_vectors, {}
    key = fingerprint(str(Path(towers_folder).resolve()), folds, params["seed"], params["sci"], params["text"],
                      prepared.queries["query_id"].astype(str).tolist(), prepared.queries["split"].tolist(),
                      float(np.abs(query_vectors).sum()))
    if key not in _LAST_OUT_OF_FOLD:
        sentences = TextEncoder.from_params(params["text"], progress=progress)
        result = out_of_fold_query_vectors(prepared, params["sci"], params["text"], int(params["seed"]), folds,
                                           query_vectors, load_towers(towers_folder),
                                           lambda texts: sentences.encode(texts, "out-of-fold towers"),
                                           log=logging.getLogger(__name__).info)
        _LAST_OUT_OF_FOLD.clear()
        _LAST_OUT_OF_FOLD[key] = result
    return _LAST_OUT_OF_FOLD[key]


def train_sft(params: dict, prepared: PreparedDataset, sids_folder: str | Path, out: str | Path,
              variant: str | None = None, dist: DistContext | None = None, progress: bool = True,
              stop_at: int | None = None, towers_folder: str | Path | None = None) -> tuple[Seq2SeqRetriever, list[dict]]:
    """Train (or resume) the SFT model for `variant`'s SIDs into `out` (model.pt, config.json,
    vocab.json, train_state.pt, metrics.jsonl, sft_data.json). With `generative.query_vector` the model reads
    the SCI query vectors of the sci_towers artifact `towers_folder`; with `generative.encoder: minilm`
    the frozen MiniLM token states of its sources come from the cache under params text.cache_dir."""
    from ..text.encoder import cache_path, load_word_embeddings

    dist = dist or DistContext.from_env(params["generative"]["device"])
    out = Path(out)
    variant = resolve_variant(sids_folder, variant)
    table = read_sid_table(sids_folder, variant)
    vocab = vocab_for(sids_folder, variant)
    max_dec_len = vocab.levels + 1
    borrow = BorrowConfig.from_params(params["sft"]["borrowed_queries"])
    sci_vectors = dense_vectors = None
    out_of_fold: dict = {}
    if params["generative"]["query_vector"] or (borrow.enabled and "dense" in borrow.channels):

        if towers_folder is None:
            raise ValueError("generative.query_vector or a dense channel of sft.borrowed_queries is on: train_sft "
                             "needs the sci_towers folder (towers_folder)")
        towers_folder = Path(towers_folder)
        query_vectors = np.load(towers_folder / SCI_QUERIES_FILE)
        if params["generative"]["query_vector"]:
            model_queries, out_of_fold = out_of_fold_vectors(params, prepared, query_vectors, towers_folder,
                                                             progress and dist.is_main)
            sci_vectors = (model_queries, np.load(towers_folder / QUERY_VIEW_FILE))
        if borrow.enabled and "dense" in borrow.channels:
            dense_vectors = (query_vectors, np.load(towers_folder / SCI_ITEM_VIEW_FILE))
    encode_views = None
    view_source = params["sft"]["indexing_query_vector"]
    if view_source not in INDEXING_QUERY_VECTORS:
        raise ValueError(f"sft.indexing_query_vector must be one of {INDEXING_QUERY_VECTORS}, got {view_source!r}")
    if sci_vectors is not None and view_source == "view":
        encode_views = query_tower_encoder(params, towers_folder, progress=progress and dist.is_main)
    config = model_config(params, vocab.size, max_dec_len, 0 if sci_vectors is None else sci_vectors[0].shape[1])
    loop = loop_config(params)
    reader = EncoderReader.for_model(config, params["text"], cache_path(params["text"]), progress=progress and dist.is_main)
    tables = SftTables.build(prepared, table, vocab, reader, max_dec_len,
                             ViewConfig.from_params(params["sft"]["indexing_views"], "sft.indexing_views"), seed=loop.seed,
                             borrow=borrow, bm25_params=params["bm25"], sci_vectors=sci_vectors,
                             dense_vectors=dense_vectors, encode_views=encode_views)
    distillation = DistillationConfig.from_params(params["sft"]["sci_distillation"])
    teacher = None
    if distillation.enabled:
        if sci_vectors is None:
            raise ValueError("sft.sci_distillation.weight > 0 needs generative.query_vector: true (the teacher scores "
                             "the query vector the model reads)")
        teacher = SciTeacher(tables.item_targets, np.load(towers_folder / SCI_ITEM_VIEW_FILE), vocab.size, distillation)
    dataset = SftDataset(tables, params["sft"]["indexing_ratio"], seed=loop.seed,
                         query_vector_dropout=params["sft"]["query_vector_dropout"], teacher=teacher)
    torch.manual_seed(loop.seed)
    model = Seq2SeqRetriever(config)
    if params["generative"]["init_from_minilm"] and config.encoder == "wordpiece":
        init_encoder_embeddings(model, torch.from_numpy(load_word_embeddings()))
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "vocab.json").write_text(json.dumps(vocab.to_json()))
        counts = {"n_retrieval_pairs": dataset.n_pairs, "n_lent_pairs": tables.n_lent,
                  "n_indexing_per_epoch": dataset.n_indexing, **out_of_fold}
        (out / DATA_FILE).write_text(json.dumps(counts))
        tracking.log_params({"variant": variant, "n_parameters": model.num_parameters(), **counts,
                             **{f"model.{k}": v for k, v in config.to_dict().items()}}, prefix=f"sft_{variant}")
    trained_from = fingerprint("sft", variant, config.to_dict(), loop.__dict__, params["sft"]["indexing_ratio"],
                               params["sft"]["indexing_views"], params["sft"]["borrowed_queries"],
                               params["bm25"] if borrow.enabled and "bm25" in borrow.channels else None,
                               params["generative"]["init_from_minilm"], sid_digest(table),
                               view_source if sci_vectors is not None else None,
                               params["sft"]["query_vector_folds"] if sci_vectors is not None else None,
                               distillation.__dict__ if distillation.enabled else None,
                               len(prepared.items), int(tables.pair_query.size), float(tables.pair_weight.sum()),
                               None if sci_vectors is None else [float(np.abs(v).sum()) for v in sci_vectors])
    history = train_loop(model, dataset, partial(sft_loss, distillation_weight=distillation.weight), loop, out, dist, metric_prefix=f"sft_{variant}",
                         trained_from=trained_from,
                         progress=progress, stop_at=stop_at)
    if dist.is_main:
        save_model(model, out)
    return model, history


def main(argv: list[str] | None = None) -> None:
    parser = training_cli("SFT of the generative retriever")
    parser.add_argument("--variant", default=None,
                        help="SID variant of the semantic_ids folder (default: its shipped variant)")
    parser.add_argument("--towers", default=None, help="sci_towers folder (query vectors, with generative.query_vector)")
    args = parser.parse_args(argv)
    params = cli_params(args)
    run_distributed(params, args, int(params["generative"]["threads"]),
                    lambda dist: train_sft(params, PreparedDataset.load(args.prepared), args.sids, args.out,
                                           args.variant, dist=dist, towers_folder=args.towers)[0])


if __name__ == "__main__":
    main()
