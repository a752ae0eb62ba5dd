"""Semantic IDs: SARQ+ACRQ against the TIGER-style baseline, ACRQ convergence, and a 1M-item scale run.

(a) On the selected dataset (Home Depot by default) the real pipeline stages run in this
process, one after another, into a temporary folder: prepared_dataset, text_embeddings,
sci_towers, sci_index (the SCI stages), then acrq_codebooks, acrq_codes, semantic_ids.
Prints, per SID variant (params semantic_ids.variants) and segment: segment, n_items, mean_length,
collision_rate, max_bucket, length_distribution; one `health` line per system (per-level
utilisation and perplexity of its codes, SID collision figures); and `acrq_convergence`:
steps and seconds to a loss plateau of ACRQ stage B against fitting all items jointly.

(b) `scale_1m`: residual k-means (4 levels x 256 codes, faiss k-means on a subsample, faiss
assignment) plus SARQ lengths and codebook health for 1,000,000 random 256-d vectors, in a
fresh process; `seconds` (vector generation excluded) and `peak_mib` (the process's peak RSS,
vectors included).
"""
from __future__ import annotations

import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import benchmark_params, emit, log, parse_args, prepared_dataset

from sid_models.quantize.acrq import AcrqConfig, compare_convergence
from sid_models.quantize.health import codebook_health
from sid_models.quantize.rkmeans import ResidualKMeans, ResidualKMeansConfig
from sid_models.quantize.sarq import Sarq, SarqConfig
from sid_models.quantize.stage import HEALTH_FILE, load_inputs
from sid_models.quantize.table import load_sid_table, segment_summary, sid_variants
from sid_models.stages import run_stage

BENCH = "sids"
# the scale run as the issue defines it
SCALE_ITEMS, SCALE_DIM, SCALE_LEVELS, SCALE_CODES = 1_000_000, 256, 4, 256
QUICK_SCALE_ITEMS = 100_000
QUICK_OVERRIDES = {"sci": {"train": {"epochs": 1}}, "acrq": {"max_steps_per_phase": 100}}
PIPELINE = ("text_embeddings", "sci_towers", "sci_index", "acrq_codebooks", "acrq_codes", "semantic_ids")


def run_pipeline(params: dict, root: Path) -> dict[str, Path]:
    folders = {"prepared_dataset": prepared_dataset(params).save(root / "prepared_dataset")}
    for stage in PIPELINE:
        start = time.perf_counter()
        metadata = run_stage(stage, params, dict(folders), root / stage)
        folders[stage] = root / stage
        log(f"{stage}: {time.perf_counter() - start:.1f} s "
            f"{ {k: v for k, v in metadata.items() if isinstance(v, (int, float))} if stage.startswith('sci') else ''}")
    return folders


def report_sids(folders: dict[str, Path]) -> None:
    import json

    health = json.loads((folders["semantic_ids"] / HEALTH_FILE).read_text())
    for system in sid_variants(folders["semantic_ids"]):
        table = load_sid_table(folders["semantic_ids"], system)
        for row in segment_summary(table):
            part = table if row["segment"] == "all" else table[table["segment"] == row["segment"]]
            lengths = part["length"].value_counts().sort_index()
            emit(BENCH, system, **row, length_distribution={str(k): int(v) for k, v in lengths.items()})
        codes, sids = health[system]["codes"], health[system]["sids"]
        emit(BENCH, system, segment="health",
             **{key: value for key, value in codes.items() if key.startswith("level")},
             code_collision_rate=codes["collision_rate"], code_max_bucket=codes["max_bucket"],
             collision_rate=sids["collision_rate"], max_bucket=sids["max_bucket"], n_sids=sids["n_sids"],
             mean_length=sids["mean_length"], bucket_histogram=sids["bucket_histogram"])


def report_convergence(params: dict, folders: dict[str, Path]) -> None:
    torch.set_num_threads(int(params["acrq"]["threads"]))
    catalogue = load_inputs(folders["prepared_dataset"], folders["sci_towers"], folders["sci_index"]).catalogue
    result = compare_convergence(catalogue, ResidualKMeansConfig.from_params(params["quantize"], params["seed"]),
                                 AcrqConfig.from_params(params["acrq"], params["seed"]))
    emit(BENCH, "acrq_convergence", **{key: round(value, 4) if isinstance(value, float) else value
                                       for key, value in result.items()})


def scale_run(n_items: int, params: dict, results) -> None:
    """Build SIDs for `n_items` random vectors; runs in a fresh process so its peak RSS is its own."""
    import faiss

    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(params["seed"])
    vectors = rng.standard_normal((n_items, SCALE_DIM), dtype=np.float32)
    exposure = np.floor(rng.pareto(1.2, size=n_items))
    head = exposure >= params["segments"]["head_min_exposure"]
    config = ResidualKMeansConfig.from_params({**params["quantize"], "levels": SCALE_LEVELS,
                                               "codes_per_level": SCALE_CODES}, params["seed"])
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    quantizer = ResidualKMeans(config)
    codes = quantizer.fit(vectors)
    fitted = time.perf_counter()
    sids = Sarq(SarqConfig.from_params(params["sarq"]), params["semantic_ids"]["disambiguation_base"]).assign(codes, quantizer.codes_per_level, exposure, head)
    health = codebook_health(sids, quantizer_levels=SCALE_LEVELS)
    end = time.perf_counter()
    results.put({"n_items": n_items, "dim": SCALE_DIM, "levels": SCALE_LEVELS, "codes_per_level": SCALE_CODES,
                 "max_points_per_centroid": config.max_points_per_centroid,
                 "seconds": round(end - start, 2), "cpu_seconds": round(_cpu_seconds() - cpu_start, 2),
                 "kmeans_seconds": round(fitted - start, 2),
                 "sarq_health_seconds": round(end - fitted, 2),
                 "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                 "mean_length": health["mean_length"], "collision_rate": health["collision_rate"],
                 "max_bucket": health["max_bucket"],
                 **{key: round(value, 4) for key, value in health.items() if key.endswith("_utilisation")}})


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def report_scale(params: dict, n_items: int) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=scale_run, args=(n_items, params, results))
    process.start()
    result = results.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"scale run exited with code {process.exitcode}")
    emit(BENCH, "scale_1m", **result)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    params = benchmark_params(args, QUICK_OVERRIDES if args.quick else None)
    log("scale run ...")
    report_scale(params, QUICK_SCALE_ITEMS if args.quick else SCALE_ITEMS)
    with tempfile.TemporaryDirectory(prefix="bench_sids_") as tmp:
        folders = run_pipeline(params, Path(tmp))
        report_sids(folders)
        report_convergence(params, folders)


if __name__ == "__main__":
    main()
