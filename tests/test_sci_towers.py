"""SCI dual towers: shapes, near-identity start, losses (masking, swap, consistency), determinism, stage."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sid_models.params import deep_merge, load_params
from sid_models.sci.losses import consistency, info_nce, triplet
from sid_models.sci.stage import train_towers as run_towers_stage
from sid_models.sci.towers import DualTower, TowerConfig, initial_projection, load_towers
from sid_models.sci.train import (TrainConfig, TrainingData, new_towers, objective, pseudo_query_inputs, stack,
                                  train_towers)
from sid_models.text.encoder import TextEncoder
from sid_models.text.states import concatenate
from sid_models.text.views import ViewConfig, query_like_views

FAST_TRAIN = {"epochs": 2, "batch_size": 64, "patience": 1, "preserve_sample": 32}


@pytest.fixture(scope="module")
def mlp_params(small_params):
    """These tests are about the MLP towers over sentence vectors: the mlp kind, whatever params.yaml ships."""
    return deep_merge(small_params, {"sci": {"tower": {"kind": "mlp"}}})


@pytest.fixture(scope="module")
def small_base(mlp_params, small_prepared):
    """MiniLM features of the reduced demo store (through the repository's text cache)."""
    encoder = TextEncoder.from_params(mlp_params["text"], progress=False)
    return (encoder.encode(small_prepared.item_text().tolist(), "items"),
            encoder.encode(small_prepared.queries["text"].tolist(), "queries"))


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


SMALL_TOWER = {"in_dim": 32, "out_dim": 16, "hidden_dim": 24, "n_blocks": 1, "dropout": 0.0, "learn_projection": True}


def _towers(seed: int = 0, **overrides) -> DualTower:
    config = TowerConfig(**{**SMALL_TOWER, **overrides})
    return DualTower(config, initial_projection(_unit(64, 32, seed).numpy(), 16, "orthogonal", seed))


def test_towers_output_unit_vectors_of_the_configured_size():
    towers = _towers()
    base = _unit(10, 32, 1).numpy()
    for encode in (towers.encode_queries, towers.encode_items):
        out = encode(base)
        assert out.shape == (10, 16) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="base features"):
        towers.encode_queries(np.zeros((3, 31), dtype=np.float32))


def test_untrained_towers_are_the_projected_base_features():
    base = _unit(100, 32, 2)
    projection = initial_projection(base.numpy(), 16, "pca", seed=0)
    towers = DualTower(TowerConfig(**{**SMALL_TOWER, "n_blocks": 2}), projection)
    expected = F.normalize(base @ projection.T, dim=1).numpy()
    np.testing.assert_allclose(towers.encode_queries(base.numpy()), expected, atol=1e-6)
    np.testing.assert_allclose(towers.encode_items(base.numpy()), expected, atol=1e-6)


def test_pca_projection_preserves_inner_products_better_than_a_random_one():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, 32)) @ np.diag(np.linspace(3, 0.1, 32))  # most energy in few directions
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    gram = base @ base.T
    errors = {}
    for kind in ("pca", "orthogonal"):
        projected = base @ initial_projection(base, 16, kind, seed=0).numpy().T
        errors[kind] = np.abs(projected @ projected.T - gram).mean()
    assert errors["pca"] < errors["orthogonal"]


def test_accidental_hit_is_not_a_negative():
    anchors = _unit(3, 8, 3)
    anchors[1] = anchors[0]  # pairs 0 and 1: one query, two relevant items
    positives = _unit(3, 8, 4)
    weights = torch.ones(3)
    accidental = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    masked = info_nce(anchors, positives, weights, 0.1, accidental)
    s = anchors @ positives.T / 0.1
    by_hand = torch.stack([
        torch.logsumexp(s[0, [0, 2]], 0) - s[0, 0],  # item 1 left out of query 0's denominator
        torch.logsumexp(s[1, [1, 2]], 0) - s[1, 1],
        torch.logsumexp(s[2], 0) - s[2, 2],
    ]).mean()
    torch.testing.assert_close(masked, by_hand)
    assert info_nce(anchors, positives, weights, 0.1) > masked  # unmasked, it would push a positive away


def test_training_batches_flag_other_positives_of_the_same_query(small_prepared, mlp_params):
    data = TrainingData.build(small_prepared, TrainConfig.from_params(mlp_params["sci"], 0))
    counts = np.bincount(data.pair_queries)
    query = int(np.flatnonzero(counts >= 2)[0])
    same = np.flatnonzero(data.pair_queries == query)[:2]
    other = int(np.flatnonzero(data.pair_queries != query)[0])
    rows = np.array([same[0], same[1], other])
    hits = data.accidental_hits(data.pair_queries[rows], data.pair_items[rows])
    assert hits[0, 1] and hits[1, 0]
    assert hits[0, 0] and hits[2, 2]  # own positives (the diagonal, ignored by the loss)
    other_relevant = data.pair_items[other] in data.pair_items[data.pair_queries == query]
    assert hits[0, 2] == other_relevant


def test_hard_negatives_are_judged_items_below_the_threshold(small_prepared, mlp_params):
    data = TrainingData.build(small_prepared, TrainConfig.from_params(mlp_params["sci"], 0))
    train = small_prepared.split_judgments("train")
    query = int(data.pair_queries[0])
    query_id = small_prepared.queries["query_id"].iloc[query]
    rows, mask = data.sample_negatives(np.array([query]), 8, np.random.default_rng(0))
    item_ids = set(small_prepared.items["item_id"].to_numpy()[rows[0][mask[0]]])
    judged = train[train["query_id"] == query_id]
    pool = set(judged.loc[~judged["relevant"], "item_id"])
    assert item_ids <= pool and len(item_ids) == min(8, len(pool))


def test_weighted_loss_counts_high_grades_more():
    anchors, positives = _unit(2, 8, 5), _unit(2, 8, 6)
    s = anchors @ positives.T / 0.1
    per_pair = torch.logsumexp(s, 1) - s.diagonal()
    weighted = info_nce(anchors, positives, torch.tensor([3.0, 1.0]), 0.1)
    torch.testing.assert_close(weighted, (3 * per_pair[0] + per_pair[1]) / 4)


def test_triplet_loss_is_the_mean_hinge_over_unmasked_negatives():
    anchors, positives = _unit(3, 8, 5), _unit(3, 8, 6)
    hard = _unit(6, 8, 7).reshape(3, 2, 8)
    hard_mask = torch.tensor([[True, False], [True, True], [False, False]])
    accidental = torch.zeros(3, 3, dtype=torch.bool)
    accidental[0, 1] = True                      # p_1 is relevant to query 0: not its negative
    margin = 0.3
    expected = []
    for b in range(3):
        negatives = [positives[j] for j in range(3) if j != b and not accidental[b, j]]
        negatives += [hard[b, h] for h in range(2) if hard_mask[b, h]]
        positive = anchors[b] @ positives[b]
        expected.append(torch.stack([(margin - positive + anchors[b] @ n).clamp(min=0) for n in negatives]).mean())
    weights = torch.tensor([2.0, 1.0, 1.0])
    value = triplet(anchors, positives, weights, margin, accidental, hard, hard_mask)
    torch.testing.assert_close(value, (2 * expected[0] + expected[1] + expected[2]) / 4)


def test_triplet_loss_is_zero_once_every_negative_is_beyond_the_margin_and_rejects_a_bad_setting():
    anchors = torch.eye(3)
    assert triplet(anchors, anchors.clone(), torch.ones(3), 0.5).item() == 0.0   # cos 1 vs 0: margin 1 > 0.5
    assert triplet(anchors, anchors.clone(), torch.ones(3), 1.5).item() == pytest.approx(0.5)
    params = load_params()["sci"]
    with pytest.raises(ValueError, match="sci.train.loss"):
        TrainConfig.from_params(deep_merge(params, {"train": {"loss": "hinge"}}), 0)
    with pytest.raises(ValueError, match="triplet_margin"):
        TrainConfig.from_params(deep_merge(params, {"train": {"loss": "triplet", "triplet_margin": 0}}), 0)


def test_objective_uses_the_contrast_params_name():
    towers = _towers(n_blocks=1)
    base = dataclasses.replace(TrainConfig.from_params(load_params()["sci"], 0), lambda_swap=1.0, temperature=0.1,
                               triplet_margin=0.4)
    queries = _unit(6, 32, 7).numpy()
    items = torch.cat([_unit(6, 32, 8), _unit(12, 32, 9)]).numpy()
    args = (towers, items, queries, np.arange(6), np.arange(6), np.arange(6, 18).reshape(6, 2),
            torch.ones(6, 2, dtype=torch.bool), torch.zeros(6, 6, dtype=torch.bool), torch.ones(6), None, None)
    with torch.no_grad():
        nce = objective(*args, dataclasses.replace(base, loss="info_nce"))
        margin = objective(*args, dataclasses.replace(base, loss="triplet"))
        query_q = towers.query_tower(torch.from_numpy(queries))
        item_i = towers.item_tower(torch.from_numpy(items))
    expected = triplet(query_q, item_i[:6], torch.ones(6), 0.4, torch.zeros(6, 6, dtype=torch.bool),
                       item_i[6:].reshape(6, 2, -1), torch.ones(6, 2, dtype=torch.bool))
    torch.testing.assert_close(margin["main"], expected)
    assert not torch.isclose(margin["main"], nce["main"])


def _objective_terms(towers: DualTower, lambda_swap: float, lambda_cons: float = 0.0):
    config = dataclasses.replace(TrainConfig.from_params(load_params()["sci"], 0), lambda_swap=lambda_swap,
                                 lambda_cons=lambda_cons, temperature=0.1)
    queries = _unit(6, 32, 7).numpy()
    items = torch.cat([_unit(6, 32, 8), _unit(12, 32, 9)]).numpy()   # 6 positives, then 2 negatives per pair
    return objective(towers, items, queries, np.arange(6), np.arange(6), np.arange(6, 18).reshape(6, 2),
                     torch.ones(6, 2, dtype=torch.bool), torch.zeros(6, 6, dtype=torch.bool), torch.ones(6), None,
                     None, config)


def test_swap_loss_adds_no_parameters_and_mirrors_the_main_loss_for_identical_towers():
    towers = _towers(n_blocks=1)
    for block in towers.query_tower.blocks:
        torch.nn.init.normal_(block.down.weight, std=0.1)  # leave the identity start
    towers.item_tower.load_state_dict(towers.query_tower.state_dict())
    parameters = sum(p.numel() for p in towers.parameters())
    terms = _objective_terms(towers, lambda_swap=1.0)
    torch.testing.assert_close(terms["swap"], terms["main"])
    assert sum(p.numel() for p in towers.parameters()) == parameters
    terms["swap"].backward()
    assert all(p.grad is not None for p in towers.query_tower.parameters() if p.requires_grad)


def test_swap_loss_trains_the_query_tower_on_items_and_the_item_tower_on_queries():
    towers = _towers()
    terms = _objective_terms(towers, lambda_swap=1.0)
    assert "swap" in terms and "swap" not in _objective_terms(_towers(), lambda_swap=0.0)
    towers.zero_grad()
    terms["swap"].backward()
    assert towers.item_tower.projection.weight.grad.abs().sum() > 0
    assert towers.query_tower.projection.weight.grad.abs().sum() > 0


def test_consistency_is_zero_for_identical_towers_and_positive_otherwise():
    x = _unit(5, 16, 10)
    assert consistency(x, x) == 0
    assert consistency(x, _unit(5, 16, 11)) > 0


def test_training_is_deterministic_under_a_seed(small_prepared, small_base, mlp_params):
    items, queries = small_base
    config = dataclasses.replace(TrainConfig.from_params(mlp_params["sci"], 3), **FAST_TRAIN, lambda_preserve=0.1)
    tower_params = deep_merge(mlp_params["sci"]["tower"], {"kinds": {"mlp": {"hidden_dim": 64}}})

    def train(config):
        towers = new_towers(tower_params, mlp_params["text"], small_prepared, items, queries, config)
        return train_towers(small_prepared, towers, items, queries, config)

    first, second = train(config), train(config)
    for name, tensor in first.towers.state_dict().items():
        torch.testing.assert_close(tensor, second.towers.state_dict()[name], rtol=0, atol=0)
    assert [h["loss_total"] for h in first.history[1:]] == [h["loss_total"] for h in second.history[1:]]
    other = train(dataclasses.replace(config, seed=4))
    assert other.history[1]["loss_total"] != first.history[1]["loss_total"]
    # the untrained towers coincide; training (with the swap, λ_swap 1) pulls them apart
    assert first.history[0]["misalign_items_l2"] == 0 and first.history[0]["misalign_queries_cos"] == pytest.approx(1)
    assert first.history[-1]["misalign_items_l2"] > 0


def test_towers_stage_writes_normalised_views_and_loadable_towers(mlp_params, small_prepared, small_base, tmp_path):
    items, queries = small_base
    prepared_folder = small_prepared.save(tmp_path / "prepared")
    text_folder = tmp_path / "text"
    text_folder.mkdir()
    np.save(text_folder / "items.npy", items)
    np.save(text_folder / "queries.npy", queries)
    params = deep_merge(mlp_params, {"sci": {"train": FAST_TRAIN, "tower": {"kinds": {"mlp": {"hidden_dim": 64}}}}})
    out = tmp_path / "towers"
    out.mkdir()
    metadata = run_towers_stage(params, {"prepared_dataset": prepared_folder, "text_embeddings": text_folder}, out)
    towers = load_towers(out)
    out_dim = params["sci"]["tower"]["kinds"]["mlp"]["out_dim"]
    for name, expected in (("item_query_view.npy", towers.encode_queries(items)),
                           ("item_item_view.npy", towers.encode_items(items)),
                           ("queries.npy", towers.encode_queries(queries))):
        saved = np.load(out / name)
        assert saved.shape == (len(expected), out_dim)
        np.testing.assert_allclose(np.linalg.norm(saved, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(saved, expected, atol=1e-6)
    assert metadata["valid_recall@10"] >= 0 and "valid_recall@10_minilm" in metadata
    assert metadata["misalign_items_l2_untrained"] == 0 and metadata["misalign_items_cos_trained"] <= 1


def test_hard_negative_cutoff_never_exceeds_the_relevance_threshold(small_prepared, mlp_params):
    data = TrainingData.build(small_prepared, dataclasses.replace(TrainConfig.from_params(mlp_params["sci"], 0),
                                                          hard_negative_max_relevance=99.0))
    negative_keys = np.repeat(np.arange(len(data.negative_offsets) - 1), np.diff(data.negative_offsets)) * data.n_items
    assert not np.isin(negative_keys + data.negative_items, data.positive_keys).any()
    assert len(data.negative_items) > 0


def _pseudo_config(mlp_params, per_pair: float, **views) -> TrainConfig:
    sci = deep_merge(mlp_params["sci"], {"train": {"pseudo_queries": {"per_pair": per_pair, **views}}})
    return dataclasses.replace(TrainConfig.from_params(sci, 5), **FAST_TRAIN)


def test_pseudo_queries_are_views_of_every_item_drawn_afresh_each_epoch(small_prepared, small_base, mlp_params):
    items, queries = small_base
    config = _pseudo_config(mlp_params, 0.5, views=2, weight=0.25)
    towers = new_towers(mlp_params["sci"]["tower"], mlp_params["text"], small_prepared, items, queries, config)
    pseudo = pseudo_query_inputs(towers, small_prepared, config, mlp_params["text"])
    n_items, n_queries = len(small_prepared.items), len(small_prepared.queries)
    # two views of every item, cold ones included, read as the towers read text (MiniLM vectors here)
    np.testing.assert_array_equal(pseudo.items, np.repeat(np.arange(n_items), 2))
    views = query_like_views(small_prepared.items["title"].astype(str).tolist(),
                             ViewConfig.from_params(config.pseudo_queries, "sci.train.pseudo_queries"), config.seed)
    encoder = TextEncoder.from_params(mlp_params["text"], progress=False)
    np.testing.assert_allclose(pseudo.inputs[3], encoder.encode([views[1][1]])[0], atol=1e-6)

    data = TrainingData.build(small_prepared, config, pseudo.items)
    rng = np.random.default_rng(0)
    first, second = data.epoch_pairs(rng), data.epoch_pairs(rng)
    judged = len(data.pair_queries)
    for epoch_queries, epoch_items, epoch_weights in (first, second):
        is_pseudo = epoch_queries >= n_queries
        assert is_pseudo.sum() == round(0.5 * judged) and (~is_pseudo).sum() == judged
        np.testing.assert_array_equal(epoch_items[is_pseudo], pseudo.items[epoch_queries[is_pseudo] - n_queries])
        np.testing.assert_allclose(epoch_weights[is_pseudo], 0.25)
        assert len(np.unique(epoch_queries[is_pseudo])) == is_pseudo.sum()   # drawn without replacement
    assert set(first[0][first[0] >= n_queries]) != set(second[0][second[0] >= n_queries])
    # a pseudo-query's own item is a positive (never an in-batch negative); it has no judged negatives
    row = n_queries + 3
    assert data.accidental_hits(np.array([row]), np.array([int(pseudo.items[3])]))[0, 0]
    _, mask = data.sample_negatives(np.array([row]), 4, rng)
    assert not mask.any()


def test_without_pseudo_queries_an_epoch_is_the_judged_pairs_in_a_seeded_order(small_prepared, mlp_params):
    data = TrainingData.build(small_prepared, _pseudo_config(mlp_params, 0.0))
    epoch_queries, epoch_items, epoch_weights = data.epoch_pairs(np.random.default_rng(7))
    order = np.random.default_rng(7).permutation(len(data.pair_queries))
    np.testing.assert_array_equal(epoch_queries, data.pair_queries[order])
    np.testing.assert_array_equal(epoch_items, data.pair_items[order])
    np.testing.assert_array_equal(epoch_weights, data.pair_weights[order])


def test_pseudo_queries_change_training_and_are_checked(small_prepared, small_base, mlp_params):
    items, queries = small_base
    config = _pseudo_config(mlp_params, 1.0)
    towers = new_towers(mlp_params["sci"]["tower"], mlp_params["text"], small_prepared, items, queries, config)
    pseudo = pseudo_query_inputs(towers, small_prepared, config, mlp_params["text"])
    with_pseudo = train_towers(small_prepared, towers, items, queries, config, pseudo=pseudo)
    plain_config = dataclasses.replace(config, pseudo_queries={**config.pseudo_queries, "per_pair": 0.0})
    plain_towers = new_towers(mlp_params["sci"]["tower"], mlp_params["text"], small_prepared, items, queries,
                              plain_config)
    assert pseudo_query_inputs(plain_towers, small_prepared, plain_config, mlp_params["text"]) is None
    plain = train_towers(small_prepared, plain_towers, items, queries, plain_config)
    assert with_pseudo.history[1]["loss_total"] != plain.history[1]["loss_total"]
    with pytest.raises(ValueError, match="pseudo-query inputs"):
        train_towers(small_prepared, plain_towers, items, queries, config)
    for per_pair, bad in ((-1.0, {}), (1.0, {"weight": 0.0}), (1.0, {"min_words": 0})):
        with pytest.raises(ValueError, match="sci.train.pseudo_queries"):
            _pseudo_config(mlp_params, per_pair, **bad)


def test_token_states_stack_keeps_both_row_sets():
    first = concatenate([np.ones((2, 384)), 2 * np.ones((3, 384))])
    second = concatenate([3 * np.ones((1, 384))])
    both = stack(first, second)
    assert len(both) == 3
    states, mask = both.batch(np.array([2, 1]))
    assert mask.tolist() == [[True, False, False], [True, True, True]]
    assert float(states[0, 0, 0]) == 3 and float(states[1, 2, 0]) == 2
