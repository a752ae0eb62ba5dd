"""Residual k-means, codebook health, the TIGER collision digit and the SID table format."""
import numpy as np
import pandas as pd
import pytest

from sid_models.quantize.health import codebook_health
from sid_models.quantize.rkmeans import FirstLevel, ResidualKMeans, ResidualKMeansConfig, cell_means
from sid_models.quantize.sids import CollisionDigit, Sids, rank_digits
from sid_models.quantize.table import load_sid_table, load_vocab, save_sids, segment_summary, sid_table, sid_variants


def config(levels=3, k=8, balanced=False, slack=1.2) -> ResidualKMeansConfig:
    return ResidualKMeansConfig(levels=levels, codes_per_level=k, iterations=10, max_points_per_centroid=256,
                                balanced=balanced, balance_slack=slack, seed=0)


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 16)) * 3
    return (centres[rng.integers(0, 6, 1200)] + rng.standard_normal((1200, 16))).astype(np.float32)


def test_encode_reproduces_fit_codes_and_error_shrinks_per_level(points):
    quantizer = ResidualKMeans(config())
    codes = quantizer.fit(points)
    assert codes.shape == (1200, 3) and codes.min() >= 0 and codes.max() < 8
    np.testing.assert_array_equal(quantizer.encode(points), codes)
    errors = [((points - quantizer.reconstruct(codes[:, :level])) ** 2).sum(1).mean() for level in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[0] < (points ** 2).sum(1).mean()


def test_reconstruct_skips_absent_levels(points):
    quantizer = ResidualKMeans(config())
    codes = quantizer.fit(points)
    truncated = codes.copy()
    truncated[:, 2] = -1
    np.testing.assert_allclose(quantizer.reconstruct(truncated), quantizer.reconstruct(codes[:, :2]))


def test_fixed_first_level_takes_the_given_cells_and_their_means(points):
    cells = (points[:, 0] > 0).astype(np.int64)
    quantizer = ResidualKMeans(config())
    codes = quantizer.fit(points, first=FirstLevel(cells, 2))
    np.testing.assert_array_equal(codes[:, 0], cells)
    np.testing.assert_allclose(quantizer.codebooks[0], cell_means(points, cells, 2), rtol=1e-5)
    np.testing.assert_array_equal(quantizer.encode(points, first_codes=cells), codes)
    with pytest.raises(ValueError, match="pass first_codes"):
        quantizer.encode(points)


def test_weights_pull_centroids_towards_heavy_points():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 4)).astype(np.float32)
    weights = np.where(x[:, 0] > 1.5, 1000.0, 1.0).astype(np.float32)
    plain = ResidualKMeans(config(levels=1, k=2))
    plain.fit(x)
    heavy = ResidualKMeans(config(levels=1, k=2))
    heavy.fit(x, weights=weights)
    assert heavy.codebooks[0][:, 0].max() > plain.codebooks[0][:, 0].max()


def test_balanced_assignment_respects_capacity():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal((900, 8)) * 0.1, rng.standard_normal((100, 8)) + 5]).astype(np.float32)
    unbalanced = ResidualKMeans(config(levels=1, k=4)).fit(x)
    balanced = ResidualKMeans(config(levels=1, k=4, balanced=True, slack=1.2)).fit(x)
    assert np.bincount(balanced[:, 0], minlength=4).max() <= int(np.ceil(1.2 * 1000 / 4))
    assert np.bincount(unbalanced[:, 0], minlength=4).max() >= np.bincount(balanced[:, 0], minlength=4).max()
    assert (balanced >= 0).all()


def test_save_load_round_trip(points, tmp_path):
    quantizer = ResidualKMeans(config())
    codes = quantizer.fit(points, first=FirstLevel((points[:, 1] > 0).astype(np.int64), 2))
    loaded = ResidualKMeans.load(quantizer.save(tmp_path / "codebooks.npz"))
    assert loaded.config == quantizer.config and loaded.fixed_first_level
    np.testing.assert_array_equal(loaded.encode(points, first_codes=codes[:, 0]), codes)


def test_bad_inputs_raise_with_the_offending_row():
    quantizer = ResidualKMeans(config(levels=1, k=2))
    x = np.zeros((10, 3), dtype=np.float32)
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        quantizer.fit(x)
    with pytest.raises(ValueError, match="3 points for 8 codes"):
        ResidualKMeans(config(k=8)).fit(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        quantizer.encode(np.ones((2, 3)))


def test_health_counts_by_hand():
    # 4 items: level 1 uses codes {0, 1} of 4 (50 %, usage 3:1), level 2 uses {0} of 2 for the two items
    # that reach it. SIDs (0,0), (0,0), (0), (1): one bucket of 2 -> collision rate 0.5.
    sids = Sids(np.array([[0, 0], [0, 0], [0, -1], [1, -1]]), np.array([2, 2, 1, 1]), [4, 2])
    health = codebook_health(sids)
    assert health["level1_utilisation"] == 0.5 and health["level2_utilisation"] == 0.5
    p = np.array([0.75, 0.25])
    assert health["level1_perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert health["level2_perplexity"] == pytest.approx(1.0)
    assert health["collision_rate"] == 0.5 and health["max_bucket"] == 2 and health["n_sids"] == 3
    assert health["bucket_histogram"] == {"1": 2, "2": 1}
    assert health["mean_length"] == 1.5


def test_sids_reject_tokens_outside_their_range():
    with pytest.raises(ValueError, match="exceeds its range 2"):
        Sids(np.array([[0, 2]]), np.array([2]), [4, 2])
    with pytest.raises(ValueError, match="ABSENT"):
        Sids(np.array([[0, 1]]), np.array([1]), [4, 2])


def test_collision_digit_makes_every_code_unique():
    codes = np.array([[0, 1], [0, 1], [0, 1], [2, 0]])
    sids = CollisionDigit(256).assign(codes, [3, 2], np.zeros(4), np.zeros(4, dtype=bool))
    assert sids.as_lists() == [[0, 1, 0], [0, 1, 1], [0, 1, 2], [2, 0, 0]]
    assert sids.codes_per_level == [3, 2, 3]
    assert codebook_health(sids, quantizer_levels=2)["collision_rate"] == 0.0


def test_rank_digits_stay_one_digit_below_the_base_and_grow_past_it():
    digits, ranges = rank_digits(np.array([0, 3, 1]), base=4)
    assert digits.tolist() == [[0], [3], [1]] and ranges == [4]
    digits, ranges = rank_digits(np.array([0, 5, 17]), base=4)        # 17 = 1*16 + 0*4 + 1
    assert digits.tolist() == [[0, 0, 0], [0, 1, 1], [1, 0, 1]] and ranges == [2, 4, 4]


def test_table_round_trip_and_segment_summary(tmp_path):
    sarq = Sids(np.array([[0, 0], [0, 1], [1, -1], [1, -1]]), np.array([2, 2, 1, 1]), [2, 2])
    tiger = CollisionDigit(256).assign(np.array([[0], [0], [1], [1]]), [2], np.zeros(4), np.zeros(4, dtype=bool))
    ids, segments = np.array(["a", "b", "c", "d"]), np.array(["head", "head", "tail", "cold"])
    tables = {"sarq_acrq": sid_table(ids, sarq, segments), "tiger": sid_table(ids, tiger, segments)}
    save_sids(tmp_path, tables, {"sarq_acrq": sarq.codes_per_level, "tiger": tiger.codes_per_level},
              {"sarq_acrq": codebook_health(sarq), "tiger": codebook_health(tiger)}, shipped="sarq_acrq")
    loaded = load_sid_table(tmp_path, "sarq_acrq")
    assert list(loaded.columns) == ["item_id", "sid", "length", "segment", "bucket_size"]
    assert loaded["sid"].tolist() == [[0, 0], [0, 1], [1], [1]]
    assert loaded["bucket_size"].tolist() == [1, 1, 2, 2]
    assert load_sid_table(tmp_path, "tiger")["sid"].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert load_vocab(tmp_path, "tiger") == {"levels": 2, "codes_per_level": [2, 2]}
    assert (tmp_path / "sids.parquet").is_file() and (tmp_path / "tiger_sids.parquet").is_file()
    assert sid_variants(tmp_path) == ["sarq_acrq", "tiger"]
    assert load_sid_table(tmp_path)["sid"].tolist() == loaded["sid"].tolist()     # None: the shipped variant
    summary = {row["segment"]: row for row in segment_summary(loaded)}
    assert summary["head"]["mean_length"] == 2 and summary["tail"]["collision_rate"] == 1.0
    assert summary["all"]["max_bucket"] == 2
    with pytest.raises(ValueError, match="unknown SID variant"):
        load_sid_table(tmp_path, "rqvae")
    assert isinstance(loaded, pd.DataFrame)
