"""The dpo_checkpoint checks: valid SIDs must be 100 %, NDCG@10 may not fall below SFT's beyond the tolerance."""
from __future__ import annotations

import json

import pytest

from sid_models.align.stage import VALIDATION_FILE, check_ndcg_vs_sft, check_valid_sids, deployable_checkpoint


def validation(sft=0.30, rad=0.31, rad_valid=1.0, vanilla_valid=1.0):
    return {"sft": {"ndcg@10": sft, "valid_sid_rate": 1.0},
            "rad_dpo": {"ndcg@10": rad, "valid_sid_rate": rad_valid},
            "vanilla_dpo": {"ndcg@10": 0.29, "valid_sid_rate": vanilla_valid}}


def test_valid_sid_check_needs_every_aligned_checkpoint_at_exactly_one():
    assert check_valid_sids(validation())[0]
    assert not check_valid_sids(validation(rad_valid=0.999))[0]
    assert not check_valid_sids(validation(vanilla_valid=0.5))[0]


def test_ndcg_check_allows_a_drop_up_to_the_tolerance_only():
    assert check_ndcg_vs_sft(validation(sft=0.30, rad=0.295), tolerance=0.01)[0]
    passed, description, figures = check_ndcg_vs_sft(validation(sft=0.30, rad=0.28), tolerance=0.01)
    assert not passed and "0.2800" in description and abs(figures["delta"] + 0.02) < 1e-12


@pytest.mark.parametrize("sft_ndcg, min_gain, expected", [
    (0.30, 0.0, "sft"), (0.20, 0.0, "rad_dpo"), (0.25, 0.0, "rad_dpo"),          # no margin: ties go to RAD-DPO
    (0.249, 0.002, "sft"), (0.247, 0.002, "rad_dpo"), (0.20, 0.002, "rad_dpo")])  # RAD-DPO must win by the margin
def test_the_registered_checkpoint_is_rad_dpo_only_when_it_beats_sft_on_validation_by_the_margin(
        tmp_path, sft_ndcg, min_gain, expected):
    dpo = tmp_path / "dpo"
    dpo.mkdir()
    (dpo / VALIDATION_FILE).write_text(json.dumps({"sft": {"ndcg@10": sft_ndcg}, "rad_dpo": {"ndcg@10": 0.25}}))
    name, folder, figures = deployable_checkpoint(tmp_path / "sft", dpo, "ndcg@10", min_gain)
    assert name == expected and folder == {"sft": tmp_path / "sft", "rad_dpo": dpo}[expected]
    assert figures == {"sft_valid_ndcg@10": sft_ndcg, "rad_dpo_valid_ndcg@10": 0.25}
    with pytest.raises(KeyError, match="recall@10"):
        deployable_checkpoint(tmp_path / "sft", dpo, "recall@10", min_gain)
    with pytest.raises(ValueError, match="aligned_min_gain"):
        deployable_checkpoint(tmp_path / "sft", dpo, "ndcg@10", -0.001)
