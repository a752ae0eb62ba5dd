"""Stage `eval_report`: every system of DESIGN.md "Evaluation" side by side on one split.

Systems (params `eval.systems`, built by `systems.build_system`) are measured one after
another in this process on the same queries with the shared metrics (`metrics.evaluate`)
and the same speed protocol (`harness.measure`). SID statistics come from the
semantic_ids artifact (per-segment summary and codebook health of both variants);
training curves from the MLflow runs of the same pipeline run (or the stages' history.json).

Artifact: report.md, report.html (self-contained), metrics.json (headline numbers),
plots/*.png, systems.json (every metric of every system). report.md, report.html,
metrics.json and plots/ are also copied to params `eval.reports_dir` (repo-relative unless
absolute): reports/metrics.json is the DVC metrics file of this stage.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from .. import tracking
from ..tracking import mlflow_key
from ..data.schema import PreparedDataset
from ..params import REPO_ROOT
from ..quantize.table import load_sid_table, segment_summary, sid_variants
from .curves import training_curves
from .harness import measure
from ..shared.metrics import bootstrap_intervals, per_query
from .report import CURVE_KEYS, INTERVAL_METRICS, EvalReport, quality_table, write_report
from .systems import build_system, system_rows

TRAINING_STAGES = ("sci_towers", "sft_checkpoint", "dpo_checkpoint")
REPORT_FILES = ("report.md", "report.html", "metrics.json")


def reports_dir(eval_params: dict) -> Path:
    folder = Path(eval_params["reports_dir"])
    return folder if folder.is_absolute() else REPO_ROOT / folder


HEALTH_VIEWS = {"sids": "SIDs", "codes": "full codes"}     # health.json keys per variant -> report label


def sid_statistics(folder: Path) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """(per-segment summary, codebook health) of every SID variant in a semantic_ids folder.

    Health rows are "<variant> SIDs" (the SIDs as served) and "<variant> full codes" (every
    level of the quantiser, before SARQ truncation), as the semantic_ids stage writes them."""
    summaries = {variant: segment_summary(load_sid_table(folder, variant)) for variant in sid_variants(folder)}
    health_path = folder / "health.json"
    health = json.loads(health_path.read_text()) if health_path.is_file() else {}
    rows = {}
    for variant in summaries:
        for key, label in HEALTH_VIEWS.items():
            if key in health.get(variant, {}):
                rows[f"{variant} {label}"] = health[variant][key]
    return summaries, rows


def uncertainty(rankings: dict[str, dict[str, list[str]]], prepared: PreparedDataset, settings: dict):
    """Bootstrap intervals of each system's INTERVAL_METRICS and of the headline system minus
    `eval.bootstrap.baseline`, over the split's queries (params `eval.bootstrap`)."""
    bootstrap = settings["bootstrap"]
    judgments = prepared.split_judgments(settings["split"])
    scored = {name: per_query(ranked, judgments, prepared.scale) for name, ranked in rankings.items()}
    intervals = {name: bootstrap_intervals({metric: frame[metric].to_numpy() for metric in INTERVAL_METRICS},
                                           bootstrap["samples"], bootstrap["seed"])
                 for name, frame in scored.items()}
    headline, baseline = settings["headline_system"], bootstrap["baseline"]
    differences = {}
    if baseline in scored and baseline != headline:
        gaps = {metric: scored[headline][metric].to_numpy() - scored[baseline][metric].to_numpy()
                for metric in INTERVAL_METRICS}
        bounds = bootstrap_intervals(gaps, bootstrap["samples"], bootstrap["seed"])
        differences[f"{headline} − {baseline}"] = {metric: (float(gaps[metric].mean()), *bounds[metric])
                                                   for metric in INTERVAL_METRICS}
    return intervals, differences


def examples(rankings: dict[str, dict[str, list[str]]], prepared: PreparedDataset, settings: dict) -> list[dict]:
    """`eval.examples` queries of the split (spread evenly over its queries in id order) with
    each system's top 5 titles and whether each is relevant."""
    judgments = prepared.split_judgments(settings["split"])
    relevant = judgments[judgments["relevant"]].groupby("query_id")["item_id"].apply(set).to_dict()
    query_ids = sorted(relevant)
    chosen = [query_ids[int(i)] for i in np.linspace(0, len(query_ids) - 1, settings["examples"])] if query_ids else []
    titles = dict(zip(prepared.items["item_id"], prepared.items["title"].astype(str)))
    texts = dict(zip(prepared.queries["query_id"], prepared.queries["text"].astype(str)))
    return [{"query": texts[query],
             "systems": {name: [(titles[item], item in relevant[query]) for item in ranked.get(query, [])[:5]]
                         for name, ranked in rankings.items()}}
            for query in dict.fromkeys(chosen)]


# the checkpoint deployable_checkpoint picks -> (checkpoint stage, subfolder) it is
DEPLOYED_CHECKPOINTS = {"sft": ("sft_checkpoint", ""), "rad_dpo": ("dpo_checkpoint", "")}
SERVED = "served"


def served_system(params: dict, inputs: dict[str, Path]) -> str:
    """The eval system the registered_model step will register: the generative row of the
    checkpoint `deployable_checkpoint` picks on validation, ranked as `registry.ranker` says,
    decoding the SIDs the registry serves with the checkpoint's own pooling."""
    from ..align.stage import deployable_checkpoint

    registry = params["registry"]
    chosen, _, _ = deployable_checkpoint(inputs["sft_checkpoint"], inputs["dpo_checkpoint"], registry["primary_metric"],
                                       registry["aligned_min_gain"])
    checkpoint, subfolder = DEPLOYED_CHECKPOINTS[chosen]
    shipped = sid_variants(inputs["semantic_ids"])[0]
    served = [name for name, row in system_rows(params).items()
              if row["component"] == "generative" and (row["checkpoint"], row["subfolder"]) == (checkpoint, subfolder)
              and row["ranker"] == registry["ranker"] and row["bucket_pool"] is None and row["variant"] == shipped]
    if not served:
        raise ValueError(f"no eval system is the served model ({chosen} checkpoint, ranker {registry['ranker']!r}): "
                         f"add its row to eval.systems or set eval.headline_system to one of {list(system_rows(params))}")
    return served[0]


def run(params: dict, inputs: dict[str, Path], out: Path) -> dict:
    settings = dict(params["eval"])
    if settings["headline_system"] == SERVED:
        settings["headline_system"] = served_system(params, inputs)
    prepared = PreparedDataset.load(inputs["prepared_dataset"])
    rows = system_rows(params)
    if settings["headline_system"] not in rows:
        raise ValueError(f"eval.headline_system {settings['headline_system']!r} is not among eval.systems "
                         f"{list(rows)}")
    item_segment = dict(zip(prepared.segments["item_id"], prepared.segments["segment"]))
    results, rankings = [], {}
    for name in rows:
        print(f"eval_report: {name}", file=sys.stderr, flush=True)
        searcher = build_system(name, params, inputs)
        result, rankings[name] = measure(name, searcher, prepared, settings["split"], settings["depth"],
                                         settings["throughput_batch"], settings["latency_queries"], item_segment)
        tracking.log_metrics({mlflow_key(f"{name}.{key}"): value for key, value in result.flat().items()})
        results.append(result)
    intervals, differences = uncertainty(rankings, prepared, settings)
    sid_segments, sid_health = sid_statistics(Path(inputs["semantic_ids"]))
    curves, curve_source = training_curves({stage: inputs[stage] for stage in TRAINING_STAGES}, CURVE_KEYS)
    report = EvalReport(
        dataset=prepared.name, split=settings["split"], systems=results, headline_system=settings["headline_system"],
        descriptions={name: row["about"] for name, row in rows.items()},
        sid_segments=sid_segments, sid_health=sid_health, curves=curves, intervals=intervals,
        differences=differences, examples=examples(rankings, prepared, settings),
        notes=[f"Headline: {settings['headline_system']}"
               + (", the model the registry serves (the checkpoint chosen on validation, with registry.ranker)."
                  if params["eval"]["headline_system"] == SERVED else " (eval.headline_system)."),
               f"Training curves from the {curve_source}." if curves else "No training curves were recorded.",
               "The dual-tower baseline (tower) is trained inside this stage with λ_swap = 0 and the sci budget."],
    )
    paths = write_report(report, out)
    (out / "systems.json").write_text(json.dumps({result.name: result.flat() for result in results}, indent=2))
    published = reports_dir(settings)
    published.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        shutil.copy2(paths[name], published / name)
    shutil.copytree(out / "plots", published / "plots", dirs_exist_ok=True)
    tracking.log_artifact(out, "report")
    headline = report.system(settings["headline_system"]).flat()
    return {
        "report_html": str(published / "report.html"),
        "headline_system": settings["headline_system"],
        **{mlflow_key(key): value for key, value in headline.items()
           if key in ("recall@10", "ndcg@10", "mrr", "recall@10_cold", "p50_ms", "qps")},
        "quality_table": quality_table(report),
    }
