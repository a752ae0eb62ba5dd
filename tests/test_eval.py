"""Evaluation harness, SID statistics, training curves and the report, on real systems and real files."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from sid_models.eval.curves import curves_from_histories
from sid_models.eval.harness import measure, rank, split_queries
from sid_models.shared.metrics import evaluate
from sid_models.eval.report import EvalReport, write_report
from sid_models.eval.stage import sid_statistics
from sid_models.eval.systems import build_system, system_rows
from sid_models.quantize.health import codebook_health
from sid_models.quantize.sids import ABSENT, Sids
from sid_models.quantize.table import save_sids, sid_table


@pytest.fixture(scope="module")
def folders(tmp_path_factory, small_stage_folders):
    return {**small_stage_folders, "root": tmp_path_factory.mktemp("eval")}


@pytest.fixture(scope="module")
def measured(folders, small_params, small_prepared):
    """BM25 and MiniLM zero-shot measured on the test split, with their rankings."""
    results = {}
    for name in ("bm25", "minilm"):
        searcher = build_system(name, small_params, folders)
        results[name] = measure(name, searcher, small_prepared, "test", depth=50, throughput_batch=64,
                                latency_queries=5)
    return results


def test_measure_scores_rankings_with_the_shared_metrics(measured, small_prepared):
    segment = dict(zip(small_prepared.segments["item_id"], small_prepared.segments["segment"]))
    for name, (result, rankings) in measured.items():
        expected = evaluate(rankings, small_prepared.split_judgments("test"), small_prepared.scale, segment)
        assert result.metrics == expected
        assert all(len(ranked) <= 50 for ranked in rankings.values())
        assert 0 < result.speed["p50_ms"] <= result.speed["p95_ms"] and result.speed["qps"] > 0


def test_dense_and_lexical_baselines_find_relevant_items(measured):
    # Demo queries are built from their target's attributes: both baselines must retrieve well above chance.
    for result, _ in measured.values():
        assert result.metrics["recall@50"] > 0.3


def test_split_queries_keeps_only_queries_with_a_relevant_item(small_prepared):
    queries, judgments = split_queries(small_prepared, "test")
    relevant = set(judgments.loc[judgments["relevant"], "query_id"])
    assert set(queries["query_id"]) == relevant
    with pytest.raises(ValueError, match="no judgments"):
        split_queries(small_prepared, "holdout")


def test_rank_rejects_a_searcher_that_drops_queries(folders, small_params):
    searcher = build_system("bm25", small_params, folders)

    class Dropping:
        def search(self, queries, k):
            return searcher.search(queries, k)[:-1]

    with pytest.raises(ValueError, match="returned 1 result lists for 2 queries"):
        rank(Dropping(), ["drill", "lamp"], 10, 8)


def _sid_folder(folder, small_prepared):
    """A semantic_ids folder with hand-built SIDs: head items long and unique, tail/cold short and shared."""
    folder.mkdir()
    segments = small_prepared.segments.set_index("item_id").loc[small_prepared.items["item_id"], "segment"].to_numpy()
    n = len(segments)
    tokens = np.full((n, 3), ABSENT)
    head = segments == "head"
    tokens[:, 0] = np.arange(n) % 4
    tokens[head, 1] = np.arange(head.sum()) % 8
    tokens[head, 2] = np.arange(head.sum()) // 8
    lengths = np.where(head, 3, 1)
    sarq = Sids(tokens, lengths, [4, 8, max(int(head.sum()) // 8 + 1, 1)])
    tiger = Sids(np.stack([np.arange(n) % 4, np.arange(n) // 4], axis=1), np.full(n, 2), [4, n // 4 + 1])
    item_ids = small_prepared.items["item_id"].to_numpy()
    save_sids(folder, {"sarq_acrq": sid_table(item_ids, sarq, segments), "tiger": sid_table(item_ids, tiger, segments)},
              {"sarq_acrq": sarq.codes_per_level, "tiger": tiger.codes_per_level},
              {variant: {"sids": codebook_health(sids), "codes": codebook_health(sids)}
               for variant, sids in (("sarq_acrq", sarq), ("tiger", tiger))}, shipped="sarq_acrq")
    return folder


def test_sid_statistics_read_both_variants(folders, small_prepared):
    folder = _sid_folder(folders["root"] / "sids", small_prepared)
    summaries, health = sid_statistics(folder)
    assert set(summaries) == {"sarq_acrq", "tiger"}
    assert set(health) == {"sarq_acrq SIDs", "sarq_acrq full codes", "tiger SIDs", "tiger full codes"}
    assert health["sarq_acrq SIDs"]["level1_utilisation"] == 1.0
    lengths = {row["segment"]: row["mean_length"] for row in summaries["sarq_acrq"]}
    assert lengths["head"] == 3 and lengths["tail"] == 1
    assert all(row["mean_length"] == 2 for row in summaries["tiger"])


def test_curves_come_from_saved_histories(tmp_path):
    towers, sft = tmp_path / "sci_towers", tmp_path / "sft_checkpoint"
    towers.mkdir()
    sft.mkdir()
    (towers / "history.json").write_text(json.dumps([{"epoch": 0, "loss_main": 2.0, "recall@10": 0.1},
                                                     {"epoch": 1, "loss_main": 1.5, "recall@10": 0.2}]))
    (sft / "metrics.jsonl").write_text("\n".join(json.dumps({"step": step, "loss": 3.0 / step, "lr": 0.1})
                                                 for step in (1, 2, 3)))
    curves = curves_from_histories({"sci_towers": towers, "sft_checkpoint": sft, "dpo_checkpoint": tmp_path / "none"},
                                   ("loss", "recall@10"))
    assert curves["sci_towers"] == {"loss_main": [(0, 2.0), (1, 1.5)], "recall@10": [(0, 0.1), (1, 0.2)]}
    assert curves["sft_checkpoint"] == {"loss": [(1, 3.0), (2, 1.5), (3, 1.0)]}
    assert "dpo_checkpoint" not in curves


def test_report_puts_every_system_side_by_side_in_self_contained_files(measured, folders, small_prepared, tmp_path):
    summaries, health = sid_statistics(_sid_folder(tmp_path / "sids", small_prepared))
    report = EvalReport(dataset=small_prepared.name, split="test", systems=[result for result, _ in measured.values()],
                        headline_system="minilm", sid_segments=summaries, sid_health=health,
                        curves={"sci_towers": {"loss": [(0, 2.0), (1, 1.0)]}}, notes=["a note"])
    paths = write_report(report, tmp_path / "report")
    markdown = paths["report.md"].read_text()
    for name, (result, _) in measured.items():
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
        assert f"{result.metrics['recall@10']:.4f}" in row
    assert "![recall_by_segment](plots/recall_by_segment.png)" in markdown
    health_row = next(line for line in markdown.splitlines() if line.startswith("| sarq_acrq SIDs |"))
    assert "collision_rate" in markdown and health_row.count("|") > 5 and "1.0000" in health_row
    assert (tmp_path / "report" / "plots" / "training_curves.png").is_file()

    page = paths["report.html"].read_text()
    images = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads(paths["metrics.json"].read_text())
    assert metrics["headline_system"] == "minilm"
    assert metrics["recall@10"] == measured["minilm"][0].metrics["recall@10"]
    assert set(metrics["systems"]) == {"bm25", "minilm"}
    assert metrics["systems"]["bm25"]["p50_ms"] == measured["bm25"][0].speed["p50_ms"]


def test_report_rejects_an_unknown_headline_system(measured):
    report = EvalReport(dataset="demo", split="test", systems=[measured["bm25"][0]], headline_system="gr_rad_dpo")
    with pytest.raises(KeyError, match="gr_rad_dpo"):
        report.headline()


def test_report_marks_the_best_system_per_column_and_keys_the_names(measured, tmp_path, small_prepared,
                                                                     small_params):
    results = [result for result, _ in measured.values()]
    report = EvalReport(dataset=small_prepared.name, split="test", systems=results, headline_system="minilm",
                        descriptions={name: row["about"] for name, row in system_rows(small_params).items()})
    markdown = write_report(report, tmp_path / "report")["report.md"].read_text()
    best = max(results, key=lambda result: result.metrics["recall@10"])
    quality = [line for line in markdown.splitlines() if line.startswith(f"| {best.name} |")][0]
    cells = [cell.strip() for cell in quality.strip("|").split("|")]
    assert cells[3] == f"{best.metrics['recall@10']:.4f} ★"
    assert "| bm25 | BM25 with English stemming" in markdown


def test_per_query_values_average_to_the_metrics_and_bootstrap_brackets_them(measured, small_prepared):
    from sid_models.shared.metrics import bootstrap_intervals, per_query

    judgments = small_prepared.split_judgments("test")
    result, rankings = measured["bm25"]
    values = per_query(rankings, judgments, small_prepared.scale)
    assert values["recall@10"].mean() == pytest.approx(result.metrics["recall@10"])
    assert values["ndcg@10"].mean() == pytest.approx(result.metrics["ndcg@10"])
    bounds = bootstrap_intervals({"ndcg@10": values["ndcg@10"].to_numpy()}, samples=500, seed=0)
    low, high = bounds["ndcg@10"]
    assert low < result.metrics["ndcg@10"] < high and high - low < 0.5
    assert bootstrap_intervals({"x": values["ndcg@10"].to_numpy()}, 500, 0)["x"] == bounds["ndcg@10"]  # seeded
    with pytest.raises(ValueError, match="equally long"):
        bootstrap_intervals({"a": np.ones(3), "b": np.ones(4)}, 10, 0)


def test_report_shows_intervals_the_difference_to_bm25_and_example_queries(measured, small_params, small_prepared,
                                                                           tmp_path):
    from sid_models.eval.stage import examples, uncertainty

    rankings = {name: ranked for name, (_, ranked) in measured.items()}
    settings = {**small_params["eval"], "headline_system": "minilm", "examples": 2,
                "bootstrap": {"samples": 200, "seed": 0, "baseline": "bm25"}}
    intervals, differences = uncertainty(rankings, small_prepared, settings)
    assert set(intervals) == {"bm25", "minilm"} and list(differences) == ["minilm − bm25"]
    gap, low, high = differences["minilm − bm25"]["recall@10"]
    expected = measured["minilm"][0].metrics["recall@10"] - measured["bm25"][0].metrics["recall@10"]
    assert gap == pytest.approx(expected) and low <= gap <= high
    shown = examples(rankings, small_prepared, settings)
    assert len(shown) == 2 and all(len(top) <= 5 for example in shown for top in example["systems"].values())
    report = EvalReport(dataset=small_prepared.name, split="test", systems=[result for result, _ in measured.values()],
                        headline_system="minilm", intervals=intervals, differences=differences, examples=shown)
    markdown = write_report(report, tmp_path / "report")["report.md"].read_text()
    assert "## Uncertainty" in markdown and "| minilm − bm25 |" in markdown
    assert "## Example queries" in markdown and f"| {shown[0]['query']} | bm25 |" in markdown
