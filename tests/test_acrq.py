"""ACRQ: head-only frozen codebooks, the stage-B adapter and its losses, convergence against joint fitting."""
import hashlib

import numpy as np
import pytest
import torch

from sid_models.quantize.acrq import (Adapter, AcrqConfig, Catalogue, ResidualCodebooks, commitment_loss,
                                      compare_convergence, encode_catalogue, fit_anchor_codebooks, preservation_loss,
                                      query_alignment_loss, train_stage_b)
from sid_models.quantize.rkmeans import ResidualKMeansConfig

torch.set_num_threads(1)  # the machine's two cores are shared; tiny matrices gain nothing from threads

QUANTIZER = ResidualKMeansConfig(levels=3, codes_per_level=8, iterations=10, max_points_per_centroid=256,
                                 balanced=False, balance_slack=1.5, seed=0)
ACRQ = AcrqConfig(anchor_segments=("head",), curriculum=("torso", "tail", "cold"), mu=1.0, query_weight=0.1,
                  temperature=0.05, batch_size=64, learning_rate=0.01, max_steps_per_phase=200,
                  plateau_window=10, plateau_patience=3, plateau_tolerance=0.01, seed=0)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    """600 items in 6 topics; 4 coarse cells by the query view; exposure falls with the row number,
    and cell 3 holds no head item at all."""
    rng = np.random.default_rng(0)
    n, d = 600, 16
    topic = rng.integers(0, 6, n)
    centres = rng.standard_normal((6, d))
    x = centres[topic] + 0.3 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cells = np.where(topic < 3, topic, 3)
    exposure = np.floor(40 / (1 + np.arange(n) / 8)).astype(float)
    exposure[cells == 3] = np.minimum(exposure[cells == 3], 2)
    segment = np.select([exposure >= 4, exposure >= 2, exposure >= 1], ["head", "torso", "tail"], "cold")
    pair_items = np.repeat(np.arange(n), exposure.astype(int))
    queries = x[pair_items] + 0.2 * rng.standard_normal((len(pair_items), d))
    return Catalogue(item_view=x.astype(np.float32), cells=cells, n_cells=4, segment=segment, exposure=exposure,
                     query_vectors=queries.astype(np.float32), pair_items=pair_items,
                     pair_queries=np.arange(len(pair_items)))


def digest(codebooks) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(c).tobytes() for c in codebooks)).hexdigest()


def test_fixture_has_every_segment(catalogue):
    assert set(catalogue.segment) == {"head", "torso", "tail", "cold"}
    assert not ((catalogue.segment == "head") & (catalogue.cells == 3)).any()


def test_stage_a_uses_all_items_for_level_one_and_head_only_for_finer_levels(catalogue):
    quantizer = fit_anchor_codebooks(catalogue, QUANTIZER, ACRQ)
    cell3 = catalogue.item_view[catalogue.cells == 3].mean(0)
    np.testing.assert_allclose(quantizer.codebooks[0][3], cell3, rtol=1e-4, atol=1e-6)
    assert quantizer.codes_per_level == [4, 8, 8]
    # finer codebooks see non-head items only through the cell means: shuffling the non-head vectors
    # within each cell (same means) leaves them unchanged
    shuffled = catalogue.item_view.copy()
    rng = np.random.default_rng(3)
    for cell in range(4):
        rows = np.flatnonzero((catalogue.cells == cell) & (catalogue.segment != "head"))
        shuffled[rows] = shuffled[rng.permutation(rows)]
    assert not np.array_equal(shuffled, catalogue.item_view)
    other = fit_anchor_codebooks(Catalogue(**{**catalogue.__dict__, "item_view": shuffled}), QUANTIZER, ACRQ)
    for level in (1, 2):
        np.testing.assert_array_equal(other.codebooks[level], quantizer.codebooks[level])


def test_stage_b_leaves_the_codebooks_byte_for_byte_unchanged(catalogue, tmp_path):
    quantizer = fit_anchor_codebooks(catalogue, QUANTIZER, ACRQ)
    path = quantizer.save(tmp_path / "codebooks.npz")
    before, file_before = digest(quantizer.codebooks), path.read_bytes()
    stage_b = train_stage_b(quantizer, catalogue, ACRQ)
    assert stage_b.steps > 0
    assert digest(quantizer.codebooks) == before
    assert quantizer.save(tmp_path / "after.npz").read_bytes() == file_before


def test_frozen_codebooks_have_no_parameters_and_joint_ones_do(catalogue):
    quantizer = fit_anchor_codebooks(catalogue, QUANTIZER, ACRQ)
    assert list(ResidualCodebooks(quantizer.codebooks, trainable=False).parameters()) == []
    assert len(list(ResidualCodebooks(quantizer.codebooks, trainable=True).parameters())) == 2


def test_stage_b_brings_non_head_items_closer_to_the_codewords(catalogue):
    quantizer = fit_anchor_codebooks(catalogue, QUANTIZER, ACRQ)
    codebooks = ResidualCodebooks(quantizer.codebooks, trainable=False)
    rest = torch.from_numpy(catalogue.item_view[catalogue.segment != "head"])
    cells = torch.from_numpy(catalogue.cells[catalogue.segment != "head"])
    identity = Adapter(rest.shape[1])
    adapter = train_stage_b(quantizer, catalogue, ACRQ).adapter
    with torch.no_grad():
        assert torch.equal(identity(rest), rest)
        error_before = float(commitment_loss(rest, codebooks(rest, cells)))
        z = adapter(rest)
        error_after = float(commitment_loss(z, codebooks(z, cells)))
    assert error_after < error_before


def test_every_item_keeps_its_routed_cell_as_level_one(catalogue):
    quantizer = fit_anchor_codebooks(catalogue, QUANTIZER, ACRQ)
    stage_b = train_stage_b(quantizer, catalogue, ACRQ)
    codes = encode_catalogue(quantizer, stage_b.adapter, catalogue, ACRQ)
    np.testing.assert_array_equal(codes[:, 0], catalogue.cells)
    head = catalogue.segment == "head"
    np.testing.assert_array_equal(codes[head], quantizer.encode(catalogue.item_view[head], catalogue.cells[head]))


def test_losses_follow_their_formulas():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    q = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert float(commitment_loss(z, q)) == pytest.approx((1 + 1) / 2)
    assert float(preservation_loss(z, q)) == pytest.approx((1 + 1) / 2)
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]) / 0.5
    expected = -torch.log_softmax(s, dim=1).diagonal().mean()
    assert float(query_alignment_loss(z, queries, torch.tensor([0, 1]), 0.5)) == pytest.approx(float(expected))


def test_infonce_masks_the_same_query_in_other_rows():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # both rows hold query 7: without masking each row would split probability with the other
    assert float(query_alignment_loss(z, queries, torch.tensor([7, 7]), 0.1)) == pytest.approx(0.0, abs=1e-6)
    assert float(query_alignment_loss(z, queries, torch.tensor([7, 8]), 0.1)) == pytest.approx(np.log(2), rel=1e-4)


def test_compare_convergence_reports_steps_and_seconds_for_both(catalogue):
    result = compare_convergence(catalogue, QUANTIZER, ACRQ)
    for key in ("stage_b_steps", "stage_b_seconds", "joint_steps", "joint_seconds",
                "stage_b_quantisation_error", "joint_quantisation_error"):
        assert result[key] > 0, key
    assert result["stage_b_steps"] == sum(result[f"stage_b_steps_{s}"] for s in ("torso", "tail", "cold"))


def test_too_few_anchor_items_is_a_clear_error(catalogue):
    big = ResidualKMeansConfig(**{**QUANTIZER.__dict__, "codes_per_level": 10_000})
    with pytest.raises(ValueError, match="cannot fit 10000 codes per level"):
        fit_anchor_codebooks(catalogue, big, ACRQ)


def test_curriculum_may_not_repeat_an_anchor_segment():
    with pytest.raises(ValueError, match="repeats anchor segments"):
        AcrqConfig(**{**ACRQ.__dict__, "anchor_segments": ("head", "torso")})
