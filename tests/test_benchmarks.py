"""A benchmark script end to end on the demo store (`--quick`): the pipeline's real stages,
real alignment and decoding, JSON lines out. The quick chain is cached under
artifacts/bench/chain/quick like any run of the script, so a second run reuses it."""
from __future__ import annotations

import json
import subprocess
import sys

from sid_models.params import REPO_ROOT

SCRIPT_TIMEOUT_S = 900


def invoke(script: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), "--data", "demo", "--quick",
                           *arguments], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, cwd=REPO_ROOT)


def run_benchmark(script: str, *arguments: str) -> list[dict]:
    done = invoke(script, *arguments)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_alignment_benchmark_scores_sft_and_the_aligned_model_alike_and_again_from_disk():
    rows = run_benchmark("alignment.py", "--seeds", "0", "--systems", "dpo")
    per_seed = {row["system"]: row for row in rows if not row.get("summary")}
    summaries = {row["system"]: row for row in rows if row.get("summary")}
    assert set(per_seed) == set(summaries) == {"sft", "dpo"}
    sft, dpo = per_seed["sft"], per_seed["dpo"]
    for row in (sft, dpo):
        for key in ("shipped_ndcg@10", "shipped_recall@10", "beam_ndcg@10", "shipped_pool_coverage", "valid_ndcg@10"):
            assert 0.0 <= row[key] <= 1.0, (row["system"], key, row[key])
        assert row["n_queries"] == sft["n_queries"] > 0
    # the aligned row carries SFT's validation figure over the same (unmined) queries
    assert dpo["sft_valid_ndcg@10"] == sft["valid_ndcg@10"]
    assert dpo["n_valid_queries"] == sft["n_valid_queries"] > 0
    assert dpo["seconds"] > 0 and dpo["mining_seconds"] >= 0
    # one seed: the summary's mean is that seed's figure, its spread 0
    assert summaries["dpo"]["shipped_ndcg@10_mean"] == round(dpo["shipped_ndcg@10"], 4)
    assert summaries["dpo"]["shipped_ndcg@10_std"] == 0.0

    again = {row["system"]: row for row in run_benchmark("alignment.py", "--seeds", "0", "--systems", "dpo",
                                                         "--eval-only") if not row.get("summary")}
    for key in ("shipped_ndcg@10", "beam_ndcg@10", "valid_ndcg@10"):
        assert again["dpo"][key] == dpo[key], key
    assert "seconds" not in again["dpo"]       # nothing was trained

    # a pool ranker fitted on the aligned checkpoint's own validation pool: only the ranked figures may move
    refit = {row["system"]: row for row in run_benchmark("alignment.py", "--seeds", "0", "--systems", "dpo",
                                                         "--eval-only", "--refit-ranker") if not row.get("summary")}
    assert refit["sft"] == again["sft"]                    # SFT keeps the ranker stage's own ranker
    assert 0.0 <= refit["dpo"]["ranker_oof_ndcg@10"] <= 1.0 and refit["dpo"]["ranker_seconds"] > 0
    assert 0.0 <= sft["ranker_oof_ndcg@10"] <= 1.0 and "ranker_seconds" not in sft
    for key in ("beam_ndcg@10", "beam_recall@10", "valid_ndcg@10", "shipped_pool_coverage"):
        assert refit["dpo"][key] == dpo[key], key
    assert "ranker_oof_ndcg@10" not in dpo


def test_alignment_benchmark_rejects_an_unknown_system_before_training():
    done = invoke("alignment.py", "--systems", "no_such_system")
    assert done.returncode != 0
    assert "no_such_system" in done.stderr
    assert done.stdout == ""


def test_beam_order_benchmark_orders_one_beam_several_ways_on_the_same_validation_queries():
    rows = {row["system"]: row for row in run_benchmark("beam_order.py", "--seeds", "0", "--lambdas", "20",
                                                        "--length-penalties", "1") if not row.get("summary")}
    assert set(rows) == {"model", "model_lp1", "fused_20", "dense_best_item", "dense_centroid", "oracle_first_sid"}
    assert len({row["n_queries"] for row in rows.values()}) == 1
    for system, row in rows.items():
        for key in ("recall@10", "ndcg@10", "top20_sid_coverage", "first_sid_hit"):
            assert 0.0 <= row[key] <= 1.0, (system, key, row[key])
        # the first 20 SIDs hold the first one's bucket, and every decoded SID holds an item
        assert row["top20_sid_items"] >= row["first_sid_items"] >= 1.0, system
    # the oracle's first SID is the model's wherever no bucket's top 10 holds a relevant item
    assert rows["oracle_first_sid"]["first_sid_hit"] >= rows["model"]["first_sid_hit"]


def test_generative_benchmark_rows_and_the_tensorised_trie_decodes_as_the_reference_does():
    rows = run_benchmark("generative.py", "--seeds", "0")
    per_seed = {row["system"]: row for row in rows if not row.get("summary") and "seed" in row}
    assert {"bm25", "gr_sarq_acrq", "hybrid", "gr_sarq_acrq_no_ranker"} <= set(per_seed)
    for system, row in per_seed.items():
        for key in ("recall@10", "ndcg@10", "recall@10_cold"):
            assert 0.0 <= row[key] <= 1.0, (system, key, row[key])
    for system in ("gr_sarq_acrq", "hybrid"):
        assert 0.0 < per_seed[system]["pool_coverage"] <= 1.0 and per_seed[system]["p50_ms"] > 0
    speed = {row["system"]: row for row in rows if row["system"] in ("decode_tensor", "decode_reference")}
    assert set(speed) == {"decode_tensor", "decode_reference"}
    # both constraints inside one beam loop return the same ranked SIDs with equal scores
    assert speed["decode_tensor"]["identical"] is True
    # beam order alone, without the ranker stage or the ranked rows
    unranked = [row for row in run_benchmark("generative.py", "--seeds", "0", "--unranked-only", "--bucket-pool", "1",
                                             "--no-speed") if not row.get("summary")]
    systems = {row["system"] for row in unranked}
    assert "gr_sarq_acrq_no_ranker" in systems and systems <= {"gr_tiger", "gr_sarq_acrq_no_ranker"}
    assert all(row["bucket_pool"] == 1 and 0.0 <= row["recall@10"] <= 1.0 for row in unranked)


def test_sci_benchmark_from_the_chain_sweeps_both_views_over_the_shipped_towers():
    rows = [row for row in run_benchmark("sci.py", "--from-chain", "--seeds", "0", "--spill", "1", "2")
            if not row.get("summary")]
    indexes = {(row["system"], row["index"]) for row in rows}
    assert {("bm25", "bm25"), ("minilm", "exact"), ("minilm", "ivf_item"), ("shipped", "exact"),
            ("shipped", "ivf_item"), ("shipped", "ivf_dual")} <= indexes
    exact = {row["system"]: row["recall@10"] for row in rows if row["index"] == "exact"}
    sweeps: dict[tuple, list[dict]] = {}
    for row in rows:
        assert 0.0 <= row["recall@10"] <= 1.0
        if row["index"].startswith("ivf"):
            assert abs(row["recall@10_of_exact"] - row["recall@10"] / exact[row["system"]]) < 1e-9
            sweeps.setdefault((row["system"], row["index"], row["spill"]), []).append(row)
    assert {spill for _, _, spill in sweeps} == {1, 2}
    for sweep in sweeps.values():
        # probing more lists compares each query with at least as many stored vectors
        scanned = [row["scanned"] for row in sorted(sweep, key=lambda row: row["nprobe"])]
        assert len(scanned) > 1 and scanned == sorted(scanned) and scanned[-1] > scanned[0]


def test_ranker_sweep_trains_each_setting_and_scores_it_out_of_fold_on_validation():
    rows = run_benchmark("ranker_sweep.py", "--seeds", "0", "--grid", "base", "--systems", "pool", "hybrid")
    assert {row["system"] for row in rows} == {"pool", "hybrid"}
    for row in rows:
        assert 0.0 <= row["cv_ndcg_at_10"] <= 1.0 and row["cv_std"] >= 0.0 and row["rounds"] >= 1
        for key in ("oof_recall@10", "oof_ndcg@10"):
            assert 0.0 <= row[key] <= 1.0, (row["system"], key, row[key])


def test_ranked_latency_splits_a_served_query_into_its_parts_and_times_the_pyfunc_model():
    rows = {row["system"]: row for row in run_benchmark("ranked_latency.py", "--seeds", "0", "--pyfunc")}
    assert set(rows) == {"pool", "hybrid"}
    for system, row in rows.items():
        for part in ("minilm", "beam", "lightgbm", "total"):
            assert row[f"{part}_p50_ms"] > 0, (system, part)
        # the whole search does every part once, so it takes longer than the beam search alone
        assert row["total_p50_ms"] > row["beam_p50_ms"]
        assert row["pyfunc_p95_ms"] >= row["pyfunc_p50_ms"] > 0
        assert row["mean_candidates"] > 0


def test_sids_benchmark_describes_each_variant_by_segment_and_runs_the_scale_quantiser():
    rows = run_benchmark("sids.py")
    scale = [row for row in rows if row["system"] == "scale_1m"]
    assert len(scale) == 1 and scale[0]["n_items"] == 100_000          # the --quick size
    assert scale[0]["seconds"] > 0 and scale[0]["peak_mib"] > 0
    by_variant: dict[str, dict[str, dict]] = {}
    for row in rows:
        if "segment" in row:
            by_variant.setdefault(row["system"], {})[row["segment"]] = row
    assert set(by_variant) == {"sarq_acrq", "tiger"}
    for variant, segments in by_variant.items():
        parts = [segments[name] for name in ("head", "torso", "tail", "cold")]
        assert sum(part["n_items"] for part in parts) == segments["all"]["n_items"], variant
        for name, row in segments.items():
            if name == "health":
                assert all(0.0 < value <= 1.0 for key, value in row.items() if key.endswith("_utilisation"))
                continue
            lengths = {int(length): count for length, count in row["length_distribution"].items()}
            assert sum(lengths.values()) == row["n_items"], (variant, name)
            mean = sum(length * count for length, count in lengths.items()) / row["n_items"]
            assert abs(mean - row["mean_length"]) < 1e-9, (variant, name)
            assert 0.0 <= row["collision_rate"] <= 1.0 and row["max_bucket"] >= 1
    # SARQ keeps head items apart and shortens the rest; the collision digit keeps every item apart
    assert by_variant["sarq_acrq"]["head"]["collision_rate"] == 0.0
    assert by_variant["sarq_acrq"]["cold"]["mean_length"] < by_variant["sarq_acrq"]["head"]["mean_length"]
    assert by_variant["tiger"]["all"]["collision_rate"] == 0.0
    assert len(by_variant["tiger"]["all"]["length_distribution"]) == 1
    convergence = next(row for row in rows if row["system"] == "acrq_convergence")
    phases = [convergence[f"stage_b_steps_{segment}"] for segment in ("torso", "tail", "cold")]
    assert sum(phases) == convergence["stage_b_steps"] and min(phases) > 0


def test_scale_benchmark_builds_every_phase_at_each_quick_size_and_compares_them():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "scale.py"), "--quick", "--decode-queries", "8"],
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    phases = {(row["n_items"], row["system"]): row for row in rows if row["system"] != "ratio"}
    # the default SID length sits below what a 100k catalogue's head allows: SARQ takes the shortest
    assert {n for n, _ in phases} == {20_000, 100_000}
    for n in (20_000, 100_000):
        assert {"sids", "trie", "exact", "ivf", "ivf_pq"} <= {phase for size, phase in phases if size == n}
        assert 0 < phases[(n, "sids")]["n_sids"] <= n and phases[(n, "sids")]["mean_length"] >= 1
        assert phases[(n, "trie")]["queries_per_s"] > 0
        for index in ("ivf", "ivf_pq"):
            assert 0.0 < phases[(n, index)]["recall@10"] <= 1.0
    ratio = next(row for row in rows if row["system"] == "ratio")
    assert ratio["n_items"] == 100_000 and ratio["against"] == 20_000
