"""SARQ on hand-built code trees whose lengths are worked out in the comments."""
import numpy as np
import pytest

from sid_models.quantize.sarq import PrefixTree, Sarq, SarqConfig

# Tree with L = 3 and no smoothing (mass = exposure):
#   item  codes     exposure  segment   masses on its path
#   A     (0,0,0)   10        head      (0)=22  (0,0)=20  (0,0,0)=10
#   B     (0,0,1)   10        head      (0)=22  (0,0)=20  (0,0,1)=10
#   C     (0,1,0)    1        tail      (0)=22  (0,1)=2   (0,1,0)=2
#   D     (0,1,0)    1        tail
#   E     (1,0,0)    1        tail      (1)=1   (1,0)=1
#   F     (1,1,0)    0        cold      (1)=1   (1,1)=0
# Entropies: H(0) = -(20/22 ln 20/22 + 2/22 ln 2/22) = 0.305; H(1) = 0 (child masses 1 and 0);
#            H(0,0) = ln 2 = 0.693; H(0,1) = 0 (one child).
CODES = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0]])
EXPOSURE = np.array([10, 10, 1, 1, 1, 0], dtype=float)
HEAD = np.array([True, True, False, False, False, False])
K = [2, 2, 2]


def sarq(tau=None, target=None, h_min=0.1, smoothing=0.0, base=256) -> Sarq:
    return Sarq(SarqConfig(tau=tau, target_mean_length=target, h_min=h_min, mass_smoothing=smoothing), base)


def test_prefix_tree_masses_and_entropies_match_the_hand_computation():
    tree = PrefixTree.build(CODES, EXPOSURE)
    assert tree.mass[0][tree.node[0][[0, 4]]].tolist() == [22, 1]
    assert tree.mass[1][tree.node[1][[0, 2, 4, 5]]].tolist() == [20, 2, 1, 0]
    h0 = -(20 / 22 * np.log(20 / 22) + 2 / 22 * np.log(2 / 22))
    assert tree.entropy[0][tree.node[0][0]] == pytest.approx(h0)
    assert tree.entropy[0][tree.node[0][4]] == pytest.approx(0.0)
    assert tree.entropy[1][tree.node[1][0]] == pytest.approx(np.log(2))
    assert tree.entropy[1][tree.node[1][2]] == pytest.approx(0.0)


def test_contended_nodes_extend_and_quiet_nodes_stop():
    # tau = 5: (0) is contended (4 items, 22 > 5, 0.305 > 0.1) -> extend; (1) has mass 1 -> E, F stop at 1.
    # (0,0) contended (20 > 5, ln 2 > 0.1) -> A, B go to 3; (0,1) has mass 2 -> C, D stop at 2.
    sids = sarq(tau=5).assign(CODES, K, EXPOSURE, HEAD)
    assert sids.lengths.tolist() == [3, 3, 2, 2, 1, 1]
    assert sids.as_lists() == [[0, 0, 0], [0, 0, 1], [0, 1], [0, 1], [1], [1]]
    assert sids.bucket_sizes().tolist() == [1, 1, 2, 2, 2, 2]


def test_head_items_extend_past_the_rule_until_unique():
    # tau = 25: no node is contended, everyone stops at 1, but head items A and B share (0) with C, D;
    # A is alone first at (0,0,0), B at (0,0,1) -> both length 3. Same when h_min blocks node (0).
    for policy in (sarq(tau=25), sarq(tau=5, h_min=0.5)):
        sids = policy.assign(CODES, K, EXPOSURE, HEAD)
        assert sids.lengths.tolist() == [3, 3, 1, 1, 1, 1]
        assert sids.bucket_sizes()[HEAD].tolist() == [1, 1]


def test_disambiguation_token_only_for_head_items_sharing_a_full_code():
    # G, H (head) and I (tail) share (2,0,0); J (tail) is alone at (3,0,0). Node (2) has a single
    # child, H = 0, so I stops at 1; G and H never end alone, reach L = 3 and get tokens 0 and 1.
    codes = np.array([[2, 0, 0], [2, 0, 0], [2, 0, 0], [3, 0, 0]])
    exposure = np.array([5, 5, 1, 1], dtype=float)
    head = np.array([True, True, False, False])
    sids = sarq(tau=0).assign(codes, [4, 1, 1], exposure, head)
    assert sids.as_lists() == [[2, 0, 0, 0], [2, 0, 0, 1], [2], [3]]
    assert sids.codes_per_level == [4, 1, 1, 2]
    assert sids.bucket_sizes().tolist() == [1, 1, 1, 1]


def test_a_collision_group_wider_than_a_level_gets_a_two_digit_suffix():
    # 10 head items share (1, 0): ranks 0..9 do not fit one base-4 digit, so each gets two,
    # most significant first (9 = 2*4 + 1); no position is wider than 4.
    codes = np.array([[1, 0]] * 10 + [[0, 0]])
    exposure = np.full(11, 5.0)
    head = np.array([True] * 10 + [False])
    sids = sarq(tau=0, base=4).assign(codes, [4, 2], exposure, head)
    assert sids.codes_per_level == [4, 2, 3, 4]
    assert sids.as_lists()[0] == [1, 0, 0, 0] and sids.as_lists()[9] == [1, 0, 2, 1] and sids.as_lists()[10] == [0]
    assert sids.bucket_sizes().tolist() == [1] * 11


def test_no_token_column_when_no_head_item_needs_one():
    assert sarq(tau=5).assign(CODES, K, EXPOSURE, HEAD).tokens.shape == (6, 3)


def test_tau_by_bisection_hits_the_hand_computed_step():
    # Mean length by tau (h_min = 0.1): tau < 22 -> [3,3,2,2,1,1] = 2.0; tau >= 22 -> [3,3,1,1,1,1] = 10/6.
    # Candidates are the node masses {0, 1, 2, 20, 22}: target 1.8 -> smallest tau with mean <= 1.8 is 22.
    policy = sarq(target=1.8)
    sids = policy.assign(CODES, K, EXPOSURE, HEAD)
    assert policy.tau == 22
    assert sids.lengths.mean() == pytest.approx(10 / 6)
    longest = sarq(target=2.0)
    assert longest.assign(CODES, K, EXPOSURE, HEAD).lengths.mean() == pytest.approx(2.0)
    assert longest.tau == 0


def test_a_target_below_the_head_floor_gives_the_shortest_sids_with_a_warning(caplog):
    # head items must stay unique, so 10/6 is the shortest mean length these codes reach
    policy = sarq(target=1.5)
    with caplog.at_level("WARNING", logger="sid_models.quantize.sarq"):
        sids = policy.assign(CODES, K, EXPOSURE, HEAD)
    assert sids.lengths.mean() == pytest.approx(10 / 6)
    assert policy.tau == 22
    assert "below the shortest mean length this catalogue reaches (1.667" in caplog.text


def test_smoothing_gives_cold_items_mass():
    tree = PrefixTree.build(CODES, EXPOSURE + 0.5)
    assert tree.mass[1][tree.node[1][5]] == pytest.approx(0.5)


def test_random_catalogue_head_unique_and_bisection_tight():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(3000, 4))
    exposure = np.floor(rng.pareto(1.2, size=3000))
    head = exposure >= 4
    policy = sarq(target=2.5, smoothing=0.1)
    sids = policy.assign(codes, [4] * 4, exposure, head)
    assert np.all(sids.bucket_sizes()[head] == 1)
    assert sids.lengths.mean() <= 2.5
    assert sids.lengths[head].mean() > sids.lengths[~head].mean()
    tree = PrefixTree.build(codes, exposure + 0.1)
    candidates = tree.candidate_taus()
    below = candidates[np.searchsorted(candidates, policy.tau) - 1]
    floor = np.where(head, tree.unique_lengths(), 1)
    token_share = (sids.lengths > 4).mean()
    assert np.maximum(tree.rule_lengths(below, 0.1), floor).mean() + token_share > 2.5


def test_bad_exposure_is_rejected():
    with pytest.raises(ValueError, match="exposure must be >= 0"):
        sarq(tau=1).assign(CODES, K, -EXPOSURE, HEAD)
    with pytest.raises(ValueError, match="one entry per item"):
        sarq(tau=1).assign(CODES, K, EXPOSURE[:3], HEAD)
