"""The alignment trainer on a real (tiny) SFT checkpoint: start point, exact resume, folder layout."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from sid_models.align.batches import SequenceScorer, make_batch, score_batch
from sid_models.align.mining import VIEW_PREFIX, preference_query_ids, preference_summary
from sid_models.align.trainer import prepare_preferences, train_alignment
from sid_models.generative.model import load_model
from sid_models.generative.train import train_sft
from sid_models.shared.training import DistContext
from sid_models.params import deep_merge
from sid_models.quantize.table import save_sids

from ddp_check import assert_ddp_matches_single_process

TINY = {
    "generative": {"preset": "cpu", "device": "cpu", "init_from_minilm": False, "query_vector": False,
                   "presets": {"cpu": {"model": {"d_model": 32, "n_heads": 2, "n_enc_layers": 1, "n_dec_layers": 1,
                                                 "d_ff": 64, "max_enc_len": 16},
                                       "sft": {"steps": 20, "batch_size": 32}}}},
    # no queries lent: lending by the towers needs their item views, which these runs do not build;
    # no query vector, so no SCI teacher
    "sft": {"warmup_steps": 5, "checkpoint_every": 1000, "log_every": 10, "lr": 0.005, "borrowed_queries": {"per_item": 0},
            "sci_distillation": {"weight": 0.0}},
    # the small store's training queries: its validation half is too few queries for a resume test
    "align": {"mining": {"queries": "train", "beam_size": 8, "max_positives": 3, "max_judged_negatives": 2,
                         "max_pseudo_negatives": 3},
              "rdrw": {"warmup_pairs": 256},
              "train": {"epochs": 1, "batch_size": 16, "warmup_steps": 2, "checkpoint_every": 4, "log_every": 2}},
}


def write_sid_folder(prepared, folder, codes=6):
    """A three-level SID table: item row in base `codes`; every other pair of items shares a SID (a bucket)."""
    folder.mkdir(parents=True, exist_ok=True)
    sids = []
    for row in range(len(prepared.items)):
        key = row // 2 if row % 4 < 2 else row
        sids.append([(key // codes ** level) % codes for level in range(3)])
    table = pd.DataFrame({"item_id": prepared.items["item_id"].astype(str), "sid": sids, "length": 3,
                          "segment": prepared.segments["segment"].to_numpy()})
    table["bucket_size"] = table.groupby(table["sid"].map(tuple))["item_id"].transform("size")
    save_sids(folder, {"sarq_acrq": table}, {"sarq_acrq": [codes] * 3}, health={}, shipped="sarq_acrq")
    return folder


@pytest.fixture(scope="module")
def setup(small_params, small_prepared, tmp_path_factory):
    params = deep_merge(small_params, TINY)
    root = tmp_path_factory.mktemp("align")
    sids = write_sid_folder(small_prepared, root / "semantic_ids")
    torch.set_num_threads(2)
    train_sft(params, small_prepared, sids, root / "sft", dist=DistContext(), progress=False)
    preferences, data = prepare_preferences(params, "rad_dpo", small_prepared, root / "sft", sids)
    return params, root, preferences, data


def test_reference_is_the_sft_model_so_training_starts_at_zero_log_ratio(setup):
    params, root, preferences, data = setup
    assert set(preferences["role"]) == {"positive", "judged_negative", "pseudo_negative"}
    sft = load_model(root / "sft").eval()
    batch = make_batch(data, np.arange(8), pairwise=False)
    with torch.no_grad():
        logp, _ = score_batch(SequenceScorer(sft), batch)
    assert torch.allclose(logp, batch["reference_logp"], atol=1e-5)


@pytest.mark.parametrize("system", ["rad_dpo", pytest.param("dpo", marks=pytest.mark.slow)])
def test_alignment_resumes_exactly_and_writes_a_loadable_checkpoint(setup, system):
    params, root, _, data = setup
    # Bit-identical runs need one thread: with two, CPU kernels may split a reduction differently
    # when the machine is loaded (this test failed under load, never on a quiet machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        check_exact_resume(params, root, data, system)
    finally:
        torch.set_num_threads(threads)


def check_exact_resume(params, root, data, system):
    straight, history = train_alignment(params, system, data, root / "sft", root / f"{system}_straight",
                                        dist=DistContext(), progress=False)
    assert len(history) >= 8 and all(np.isfinite(record["loss"]) for record in history)
    train_alignment(params, system, data, root / "sft", root / f"{system}_resumed", dist=DistContext(),
                    progress=False, stop_at=4)
    resumed, _ = train_alignment(params, system, data, root / "sft", root / f"{system}_resumed",
                                 dist=DistContext(), progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    loaded = load_model(root / f"{system}_straight")
    sft = load_model(root / "sft")
    assert any(not torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), sft.state_dict().values()))
    for name in ("model.pt", "config.json", "vocab.json", "train_state.pt", "metrics.jsonl"):
        assert (root / f"{system}_straight" / name).is_file()
    assert (root / f"{system}_straight" / "rdrw.json").is_file() == (system == "rad_dpo")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_torchrun_ddp_ranks_agree_and_match_a_single_process_run(setup, small_prepared, tmp_path):
    params, root, _, _ = setup
    params = deep_merge(params, {"generative": {"device": "cpu"}, "align": {"threads": 1}})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    command = ["-m", "sid_models.align.trainer", "--prepared", str(small_prepared.save(tmp_path / "prepared")),
               "--sids", str(root / "semantic_ids"), "--sft", str(root / "sft"), "--system", "rad_dpo",
               "--params", str(params_file), "--save-every-rank"]
    assert_ddp_matches_single_process(command, tmp_path, timeout=300)


def test_a_query_vector_policy_is_aligned_on_the_sci_query_vectors(small_params, small_prepared, tmp_path):
    """Training queries read their f_q(query), view queries their item's f_q(item)."""
    params = deep_merge(small_params, deep_merge(TINY, {"generative": {"query_vector": True},
                                                        # stand-in vectors, no towers to encode SFT's views with
                                                        "sft": {"indexing_query_vector": "title"},
                                                        "align": {"train": {"checkpoint_every": 1000},
                                                                  "mining": {"view_items": 5}}}))
    sids = write_sid_folder(small_prepared, tmp_path / "semantic_ids")
    towers = tmp_path / "sci_towers"
    towers.mkdir()
    rng = np.random.default_rng(0)
    sci_queries = rng.normal(size=(len(small_prepared.queries), 8)).astype(np.float32)
    np.save(towers / "queries.npy", sci_queries)
    item_queries = rng.normal(size=(len(small_prepared.items), 8)).astype(np.float32)
    np.save(towers / "item_query_view.npy", item_queries)
    train_sft(params, small_prepared, sids, tmp_path / "sft", dist=DistContext(), progress=False, towers_folder=towers)
    with pytest.raises(ValueError, match="reads SCI query vectors"):
        prepare_preferences(params, "rad_dpo", small_prepared, tmp_path / "sft", sids)
    preferences, data = prepare_preferences(params, "rad_dpo", small_prepared, tmp_path / "sft", sids, towers=towers)
    train_ids = small_prepared.queries["query_id"].astype(str).tolist()
    first = train_ids.index(data.query_ids[0])
    assert np.allclose(data.query_vectors[0].numpy(), sci_queries[first])
    item_row = {VIEW_PREFIX + item: row for row, item in enumerate(small_prepared.items["item_id"].astype(str))}
    views = [(row, query_id) for row, query_id in enumerate(data.query_ids) if query_id.startswith(VIEW_PREFIX)]
    assert len(views) == 5 and preference_summary(preferences)["n_view_queries"] == 5
    for row, query_id in views:
        assert np.allclose(data.query_vectors[row].numpy(), item_queries[item_row[query_id]])
        assert len(data.positives[row]) == 1 and len(data.negatives[row]) > 0
    sft = load_model(tmp_path / "sft").eval()
    batch = make_batch(data, np.arange(4), pairwise=False)
    with torch.no_grad():
        logp, _ = score_batch(SequenceScorer(sft), batch)
    assert torch.allclose(logp, batch["reference_logp"], atol=1e-5)
    model, history = train_alignment(params, "rad_dpo", data, tmp_path / "sft", tmp_path / "aligned",
                                     dist=DistContext(), progress=False)
    assert model.config.query_vector_dim == 8 and history


def test_judged_queries_off_mines_the_view_queries_alone(setup, small_prepared):
    params, root, _, _ = setup
    views_only = deep_merge(params, {"align": {"mining": {"judged_queries": False, "view_items": 6}}})
    preferences, data = prepare_preferences(views_only, "rad_dpo", small_prepared, root / "sft",
                                            root / "semantic_ids")
    assert len(data.query_ids) == 6 and all(query_id.startswith(VIEW_PREFIX) for query_id in data.query_ids)
    assert set(preferences["query_id"]) == set(data.query_ids)
    assert set(preferences["role"]) == {"positive", "pseudo_negative"}
    nothing = deep_merge(params, {"align": {"mining": {"judged_queries": False, "view_items": 0}}})
    with pytest.raises(ValueError, match="nothing is left to mine"):
        prepare_preferences(nothing, "rad_dpo", small_prepared, root / "sft", root / "semantic_ids")


def test_an_alignment_system_is_one_row_of_params_merged_over_align():
    from sid_models.align.trainer import AlignmentConfig, mining_of, system_names
    from sid_models.params import load_params

    params = deep_merge(load_params(), {"align": {"systems": {
        "rad_dpo_edge_simpo": {"loss": {"reference_free": True, "contrast": "listwise"},
                               "mining": {"pseudo_negatives": "pool_edge"}}}}})
    assert "rad_dpo_edge_simpo" in system_names(params)
    config = AlignmentConfig.for_system(params, "rad_dpo_edge_simpo")
    assert config.loss.reference_free and config.loss.contrast == "listwise" and config.loss.tlgd
    assert mining_of(params, "rad_dpo_edge_simpo")["pseudo_negatives"] == "pool_edge"
    assert mining_of(params, "rad_dpo")["pseudo_negatives"] == params["align"]["mining"]["pseudo_negatives"]
    dpo = AlignmentConfig.for_system(params, "dpo")
    assert dpo.pairwise and not dpo.rdrw and not dpo.loss.tlgd
    with pytest.raises(ValueError, match="align.systems"):
        AlignmentConfig.for_system(params, "rad_dpo_typo")


def test_valid_mining_aligns_on_unseen_validation_queries_only(setup, small_prepared):
    params, root, _, _ = setup
    valid = deep_merge(params, {"align": {"mining": {"queries": "valid", "valid_mining_share": 0.5}}})
    preferences, data = prepare_preferences(valid, "rad_dpo", small_prepared, root / "sft", root / "semantic_ids")
    mined = set(preference_query_ids(small_prepared, valid["align"]["mining"], int(valid["align"]["seed"])))
    assert set(data.query_ids) == set(preferences["query_id"]) and set(data.query_ids) <= mined
    assert set(data.query_ids) <= set(small_prepared.split_queries("valid")["query_id"].astype(str))
