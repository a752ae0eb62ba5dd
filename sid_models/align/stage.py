"""Stage `dpo_checkpoint`: RAD-DPO (and the vanilla DPO baseline) from the SFT checkpoint.

Inputs: prepared_dataset, sci_towers (item vectors for the `sci_item` RDRW similarity),
sci_index, semantic_ids, sft_checkpoint. Writes, in the sft_checkpoint layout so
`generative.retriever.load_retriever` loads it:

  model.pt, config.json, vocab.json, train_state.pt, metrics.jsonl   RAD-DPO policy
  sci/                   the SFT checkpoint's retriever assets (query tower, item views, settings)
  rdrw.json              the RDRW similarity quantiles fixed by the warm-up
  preferences.parquet    the mined preference table (query_id, sid, role, weight, rank)
  vanilla_dpo/           the vanilla pairwise DPO baseline, same layout (when
                         `align.train_vanilla_baseline`)
  validation.json        validation figures of sft / rad_dpo / vanilla_dpo: ndcg@10,
                         recall@10, recall@10_multi, valid_sid_rate (read by the asset checks),
                         on the validation queries the alignment did not mine
                         (`mining.selection_dataset`: all of them unless `align.mining.queries` is valid)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import tracking
from ..data.schema import PreparedDataset
from ..generative.retriever import copy_retriever_assets, load_retriever
from ..generative.stage import VALIDATION_FILE
from ..generative.stage import read_validation as read_checkpoint_validation
from ..generative.stage import validate
from ..shared.training import DistContext
from .mining import preference_summary, selection_dataset, selection_key
from .trainer import mining_of, prepare_preferences, train_alignment

VANILLA_FOLDER = "vanilla_dpo"
REPORTED = ("ndcg@10", "recall@10", "recall@10_multi", "valid_sid_rate")


def validation_metrics(checkpoint: str | Path, inputs: dict[str, Path], prepared: PreparedDataset,
                       params: dict, device: torch.device) -> dict[str, float]:
    """Validation figures of one checkpoint, computed exactly as the SFT stage computes its own."""
    retriever = load_retriever(checkpoint, inputs["semantic_ids"], inputs["prepared_dataset"],
                               device=device)
    figures = validate(retriever, prepared, int(params["sft"]["valid_max_queries"]))
    return {key: figures[key] for key in REPORTED if key in figures}


def run(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    align = params["align"]
    torch.set_num_threads(int(align["threads"]))
    dist = DistContext.from_env(params["generative"]["device"])
    prepared = PreparedDataset.load(inputs["prepared_dataset"])
    sft = inputs["sft_checkpoint"]
    selection_of = {name: selection_key(mining_of(params, name)) for name in ("rad_dpo", "dpo")}
    if align["train_vanilla_baseline"] and selection_of["dpo"] != selection_of["rad_dpo"]:
        raise ValueError(f"align.systems rad_dpo and dpo mine different queries ({selection_of}): their validation "
                         f"figures would be over different queries; give them the same align.mining.queries")
    selection = selection_dataset(prepared, mining_of(params, "rad_dpo"), int(align["seed"]))
    preferences, data = prepare_preferences(params, "rad_dpo", prepared, sft, inputs["semantic_ids"], dist.device,
                                            towers=inputs["sci_towers"])
    if dist.is_main:
        preferences.to_parquet(out / "preferences.parquet", index=False)
    summary = preference_summary(preferences)
    tracking.log_params(summary, prefix="align_mining")
    checkpoints = {"sft": sft, "rad_dpo": out}
    _, history = train_alignment(params, "rad_dpo", data, sft, out, dist=dist)
    if dist.is_main:
        copy_retriever_assets(sft, out)    # vanilla_dpo/ finds them in its parent
    metadata = {**summary, "rad_dpo_steps": len(history), "rad_dpo_final_loss": history[-1]["loss"]}
    if align["train_vanilla_baseline"]:
        vanilla_data = data
        if mining_of(params, "dpo") != mining_of(params, "rad_dpo"):
            _, vanilla_data = prepare_preferences(params, "dpo", prepared, sft, inputs["semantic_ids"], dist.device,
                                                  towers=inputs["sci_towers"])
        _, vanilla_history = train_alignment(params, "dpo", vanilla_data, sft, out / VANILLA_FOLDER, dist=dist)
        checkpoints["vanilla_dpo"] = out / VANILLA_FOLDER
        metadata["vanilla_dpo_final_loss"] = vanilla_history[-1]["loss"]
    if not dist.is_main:
        return {}       # under torchrun the other ranks only train; rank 0 validates and reports
    validation = {name: validation_metrics(folder, inputs, selection, params, dist.device)
                  for name, folder in checkpoints.items()}
    (out / VALIDATION_FILE).write_text(json.dumps(validation, indent=2))
    for name, figures in validation.items():
        metadata.update({f"{name}_valid_{key}": value for key, value in figures.items()})
        tracking.log_metrics({f"{name}_valid_{key}": value for key, value in figures.items()})
    return metadata


def read_validation(folder: str | Path) -> dict[str, dict[str, float]]:
    return read_checkpoint_validation(folder, "dpo_checkpoint")


def check_valid_sids(validation: dict[str, dict[str, float]]) -> tuple[bool, str, dict[str, float]]:
    """Every aligned checkpoint decodes only SIDs of the table on the validation queries."""
    rates = {name: figures["valid_sid_rate"] for name, figures in validation.items() if name != "sft"}
    passed = all(rate == 1.0 for rate in rates.values())
    return passed, f"valid-SID rate on validation queries: {rates} (must be 1.0)", rates


def check_ndcg_vs_sft(validation: dict[str, dict[str, float]], tolerance: float) -> tuple[bool, str, dict[str, float]]:
    """RAD-DPO's validation NDCG@10 is at most `tolerance` below the SFT checkpoint's."""
    sft, aligned = validation["sft"]["ndcg@10"], validation["rad_dpo"]["ndcg@10"]
    figures = {"sft_ndcg@10": sft, "rad_dpo_ndcg@10": aligned, "delta": aligned - sft, "tolerance": tolerance}
    if "vanilla_dpo" in validation:
        figures["vanilla_dpo_ndcg@10"] = validation["vanilla_dpo"]["ndcg@10"]
    return aligned >= sft - tolerance, (f"validation NDCG@10 rad_dpo {aligned:.4f} vs sft {sft:.4f} "
                                        f"(allowed drop {tolerance})"), figures


def deployable_checkpoint(sft_folder: str | Path, dpo_folder: str | Path, metric: str,
                          min_gain: float) -> tuple[str, Path, dict]:
    """(name, folder, figures) of the checkpoint to register: RAD-DPO when its `metric` on the
    validation queries the alignment did not mine is at least `min_gain` (params
    registry.aligned_min_gain) above the SFT model's, else SFT. Alignment is not guaranteed to
    help, and on Home Depot the two differ by less than the seed spread (README, alignment), so a
    margin keeps validation noise from choosing between equal models."""
    if min_gain < 0:
        raise ValueError(f"registry.aligned_min_gain must be >= 0, got {min_gain}")
    validation = read_validation(dpo_folder)
    missing = [name for name in ("sft", "rad_dpo") if metric not in validation.get(name, {})]
    if missing:
        raise KeyError(f"{Path(dpo_folder) / VALIDATION_FILE} has no validation {metric} for {missing}")
    figures = {f"{name}_valid_{metric}": validation[name][metric] for name in ("sft", "rad_dpo")}
    if validation["rad_dpo"][metric] < validation["sft"][metric] + min_gain:
        return "sft", Path(sft_folder), figures
    return "rad_dpo", Path(dpo_folder), figures
