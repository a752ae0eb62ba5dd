"""Stages `acrq_codebooks` (ACRQ stage A), `acrq_codes` (stage B) and `semantic_ids`.

acrq_codebooks artifact: `codebooks.npz` (ResidualKMeans.save: level 1 = cell means of the
item view over the SCI partition, levels 2..L fitted on anchor items) and `health.json`
(codebook health of the anchor items' codes).

acrq_codes artifact: `codes.npy` int64 [n_items, L] full codes in items.parquet row
order (Q(x) for anchor items, Q(g(x)) for the rest), `adapter.pt` (state_dict of g),
`convergence.json` (stage B steps, seconds, loss per phase) and `health.json`.

semantic_ids artifact: see `sid_models.quantize.table` (a SID table per variant, vocab.json,
health.json). Every variant of params `semantic_ids.variants` goes through the same code
(`sid_models.quantize.variants`): full codes from a quantiser, then a SID policy.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import tracking
from ..data.schema import PreparedDataset
from ..sci.index import DualViewIndex
from ..sci.stage import ITEM_VIEW_FILE, QUERIES_FILE, QUERY_VIEW_FILE
from ..sci.towers import quantised_width
from .acrq import AcrqConfig, Catalogue, encode_catalogue, fit_anchor_codebooks, train_stage_b
from .health import codebook_health
from .rkmeans import ResidualKMeans, ResidualKMeansConfig
from .sids import Sids
from .table import save_sids, segment_summary, sid_table
from .variants import CODEBOOKS_FILE, CODES_FILE, build_variant, variant_rows

ADAPTER_FILE = "adapter.pt"
CONVERGENCE_FILE = "convergence.json"
HEALTH_FILE = "health.json"


@dataclass
class StageInputs:
    prepared: PreparedDataset
    catalogue: Catalogue


def load_inputs(prepared_folder: Path, towers_folder: Path, index_folder: Path) -> StageInputs:
    """The prepared dataset and the catalogue arrays (item view, routing, training pairs). The
    cells route the towers' whole vectors; the item view and query vectors the codes quantise are
    the towers' `quantised_width` leading columns, renormalised."""
    prepared = PreparedDataset.load(prepared_folder)
    items, queries = prepared.items, prepared.queries
    item_view = np.load(towers_folder / ITEM_VIEW_FILE)
    query_view = np.load(towers_folder / QUERY_VIEW_FILE)
    query_vectors = np.load(towers_folder / QUERIES_FILE)
    for name, array, rows in ((ITEM_VIEW_FILE, item_view, len(items)), (QUERY_VIEW_FILE, query_view, len(items)),
                              (QUERIES_FILE, query_vectors, len(queries))):
        if array.ndim != 2 or len(array) != rows:
            raise ValueError(f"{towers_folder / name} has shape {array.shape}, expected {rows} rows")
    index = DualViewIndex.load(index_folder)
    cells = index.route(query_view if index.coarse_view == "query" else item_view)
    width = quantised_width(towers_folder)
    if width is not None:
        item_view, query_vectors = _unit_rows(item_view[:, :width]), _unit_rows(query_vectors[:, :width])
    segments = prepared.segments.set_index("item_id").reindex(items["item_id"])
    if segments["segment"].isna().any():
        missing = segments.index[segments["segment"].isna()][0]
        raise ValueError(f"item {missing!r} has no segment in {prepared_folder / 'segments.parquet'}")
    relevant = prepared.relevant("train")
    item_row = {item_id: row for row, item_id in enumerate(items["item_id"])}
    query_row = {query_id: row for row, query_id in enumerate(queries["query_id"])}
    return StageInputs(prepared, Catalogue(
        item_view=item_view.astype(np.float32), cells=cells, n_cells=index.nlist,
        segment=segments["segment"].to_numpy(dtype=str), exposure=segments["exposure"].to_numpy(dtype=np.float64),
        query_vectors=query_vectors.astype(np.float32),
        pair_items=relevant["item_id"].map(item_row).to_numpy(dtype=np.int64),
        pair_queries=relevant["query_id"].map(query_row).to_numpy(dtype=np.int64)))


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _configs(params: dict) -> tuple[ResidualKMeansConfig, AcrqConfig]:
    return (ResidualKMeansConfig.from_params(params["quantize"], params["seed"]),
            AcrqConfig.from_params(params["acrq"], params["seed"]))


def _stage_inputs(inputs: dict[str, Path]) -> StageInputs:
    return load_inputs(inputs["prepared_dataset"], inputs["sci_towers"], inputs["sci_index"])


def codebook_digest(quantizer: ResidualKMeans) -> str:
    digest = hashlib.sha256()
    for codebook in quantizer.codebooks:
        digest.update(np.ascontiguousarray(codebook).tobytes())
    return digest.hexdigest()


def full_code_sids(codes: np.ndarray, codes_per_level: list[int]) -> Sids:
    return Sids(codes.astype(np.int64), np.full(len(codes), codes.shape[1], dtype=np.int64), list(codes_per_level))


def fit_codebooks(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    """Stage `acrq_codebooks`: ACRQ stage A."""
    loaded = _stage_inputs(inputs)
    catalogue = loaded.catalogue
    quantizer_config, config = _configs(params)
    quantizer = fit_anchor_codebooks(catalogue, quantizer_config, config)
    anchor = catalogue.rows(config.anchor_segments)
    anchor_codes = quantizer.encode(catalogue.item_view[anchor], first_codes=catalogue.cells[anchor])
    health = codebook_health(full_code_sids(anchor_codes, quantizer.codes_per_level))
    quantizer.save(out / CODEBOOKS_FILE)
    (out / HEALTH_FILE).write_text(json.dumps(health, indent=2))
    return {"n_anchor_items": int(len(anchor)), "codes_per_level": quantizer.codes_per_level,
            "codebooks_sha256": codebook_digest(quantizer), **_prefixed("anchor", health)}


def fit_tail_codes(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    """Stage `acrq_codes`: ACRQ stage B, then the full codes of every item."""
    torch.set_num_threads(min(torch.get_num_threads(), int(params["acrq"]["threads"])))
    catalogue = _stage_inputs(inputs).catalogue
    _, config = _configs(params)
    quantizer = ResidualKMeans.load(inputs["acrq_codebooks"] / CODEBOOKS_FILE)
    before = codebook_digest(quantizer)
    stage_b = train_stage_b(quantizer, catalogue, config)
    if codebook_digest(quantizer) != before:
        raise RuntimeError("ACRQ stage B changed the frozen stage-A codebooks")
    codes = encode_catalogue(quantizer, stage_b.adapter, catalogue, config)
    health = codebook_health(full_code_sids(codes, quantizer.codes_per_level))
    for phase, convergence in stage_b.phases.items():
        window = config.plateau_window
        for step in range(window, convergence.steps + 1, window):
            tracking.log_metrics({f"stage_b_loss_{phase}": float(np.mean(convergence.losses[step - window:step]))}, step=step)
    np.save(out / CODES_FILE, codes)
    torch.save(stage_b.adapter.state_dict(), out / ADAPTER_FILE)
    convergence = {phase: {"steps": c.steps, "seconds": c.seconds, "final_loss": c.final_loss, "plateaued": c.plateaued}
                   for phase, c in stage_b.phases.items()}
    (out / CONVERGENCE_FILE).write_text(json.dumps(convergence, indent=2))
    (out / HEALTH_FILE).write_text(json.dumps(health, indent=2))
    return {"stage_b_steps": stage_b.steps, "stage_b_seconds": round(stage_b.seconds, 3),
            **{f"stage_b_steps_{phase}": c.steps for phase, c in stage_b.phases.items()},
            "codebooks_sha256": before, **_prefixed("codes", health)}


def build_sids(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    """Stage `semantic_ids`: the SID table of every variant of params `semantic_ids.variants`."""
    loaded = _stage_inputs(inputs)
    catalogue, items = loaded.catalogue, loaded.prepared.items
    head = catalogue.segment == "head"
    tables, ranges, health, metadata = {}, {}, {}, {}
    for name in variant_rows(params):
        (full_codes, codes_per_level), policy = build_variant(name, catalogue, params, inputs)
        sids = policy.assign(full_codes, codes_per_level, catalogue.exposure, head)
        tables[name] = sid_table(items["item_id"].to_numpy(), sids, catalogue.segment)
        ranges[name] = sids.codes_per_level
        health[name] = {"codes": codebook_health(full_code_sids(full_codes, codes_per_level)),
                        "sids": codebook_health(sids, quantizer_levels=len(codes_per_level))}
        metadata.update(_prefixed(f"{name}_codes", health[name]["codes"]))
        metadata.update(_prefixed(f"{name}_sids", health[name]["sids"]))
        for row in segment_summary(tables[name]):
            metadata.update({f"{name}_{row['segment']}_{key}": value for key, value in row.items() if key != "segment"})
        metadata.update(_prefixed(name, policy.fitted()))
    save_sids(out, tables, ranges, health, params["semantic_ids"]["shipped"])
    tracking.log_artifact(out / "health.json")
    return metadata


def _prefixed(prefix: str, health: dict) -> dict:
    return {f"{prefix}_{key}": value for key, value in health.items()}
