"""The mechanisms of the RAD-DPO losses, proved on plain tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sid_models.align.losses import (PreferenceLossConfig, RewardWeighter, preference_loss, prefix_detached_logprob,
                                     sequence_logprob, shared_prefix_length, token_logprobs)

PAD, EOS = 0, 2
VOCAB = 12
# chosen = (5, 7, 9) EOS, rejected = (5, 7, 10) EOS: shared prefix of 2 tokens.
CHOSEN = [5, 7, 9, EOS]
REJECTED = [5, 7, 10, EOS]
SHARED = 2


def config(**switches) -> PreferenceLossConfig:
    values = dict(beta=0.5, margin=0.0, reference_free=False, tlgd=True, mlgc=False, sft_weight=0.0, contrast="per_positive",
                  detach_levels=0)
    values.update(switches)
    return PreferenceLossConfig(**values)


def pair_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.tensor([CHOSEN, REJECTED])
    logits = torch.randn(2, len(CHOSEN), VOCAB, generator=generator, requires_grad=True)
    reference = token_logprobs(torch.randn(2, len(CHOSEN), VOCAB, generator=generator), targets, PAD)
    return logits, reference, targets


def rejected_logit_grad(tlgd: bool, mlgc: bool, reference_free: bool = False, detach_levels: int = 0,
                        contrast: str = "per_positive") -> torch.Tensor:
    logits, reference, targets = pair_batch()
    loss, _ = preference_loss(token_logprobs(logits, targets, PAD), None if reference_free else reference, targets,
                              pos_index=torch.tensor([[0]]), pos_weight=torch.ones(1, 1),
                              neg_index=torch.tensor([[1]]), pair_weight=torch.ones(1, 1, 1),
                              config=config(tlgd=tlgd, mlgc=mlgc, reference_free=reference_free,
                                            sft_weight=0.0, detach_levels=detach_levels, contrast=contrast),
                              pad_id=PAD)
    loss.backward()
    return logits.grad[1]


def test_token_logprobs_zero_at_pad_and_match_log_softmax():
    logits = torch.randn(1, 4, VOCAB)
    targets = torch.tensor([[5, 9, EOS, PAD]])
    logp = token_logprobs(logits, targets, PAD)
    expected = torch.log_softmax(logits, -1)[0, torch.arange(3), targets[0, :3]]
    assert torch.allclose(logp[0, :3], expected)
    assert logp[0, 3] == 0
    assert torch.allclose(sequence_logprob(logp, targets, PAD), expected.sum().unsqueeze(0))
    assert torch.allclose(sequence_logprob(logp, targets, PAD, length_normalise=True), expected.mean().unsqueeze(0))


def test_shared_prefix_length_stops_at_first_difference_and_ignores_pad():
    chosen = torch.tensor([[5, 7, 9, EOS], [5, 7, EOS, PAD], [4, 7, 9, EOS]])
    rejected = torch.tensor([[5, 7, 10, EOS], [5, 7, 8, EOS], [5, 7, 9, EOS]])
    assert shared_prefix_length(chosen, rejected, PAD).tolist() == [2, 2, 0]


@pytest.mark.parametrize("mlgc", [False, True])
@pytest.mark.parametrize("reference_free", [False, True])
def test_tlgd_gives_exactly_zero_gradient_on_rejected_shared_prefix_logits(mlgc, reference_free):
    grad = rejected_logit_grad(tlgd=True, mlgc=mlgc, reference_free=reference_free)
    assert torch.equal(grad[:SHARED], torch.zeros_like(grad[:SHARED]))
    assert grad[SHARED:].abs().sum() > 0


@pytest.mark.parametrize("mlgc", [False, True])
def test_without_tlgd_the_rejected_shared_prefix_receives_gradient(mlgc):
    grad = rejected_logit_grad(tlgd=False, mlgc=mlgc)
    assert (grad[:SHARED].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("tlgd,mlgc,contrast,levels,detached", [
    (False, False, "per_positive", 1, 1), (False, True, "per_positive", 3, 3), (False, True, "listwise", 1, 1),
    (True, True, "per_positive", 3, 3), (True, True, "listwise", 3, 3),
    (True, False, "per_positive", 1, SHARED)])       # the shared prefix is longer than k: TLGD's prefix stands
def test_detach_levels_stops_the_gradient_on_a_rejected_sids_first_codes(tlgd, mlgc, contrast, levels, detached):
    grad = rejected_logit_grad(tlgd=tlgd, mlgc=mlgc, detach_levels=levels, contrast=contrast)
    assert torch.equal(grad[:detached], torch.zeros_like(grad[:detached]))
    assert (grad[detached:].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("levels", [1, 3])
def test_detach_levels_leaves_the_loss_value_unchanged(levels):
    losses = []
    for detach_levels in (0, levels):
        logits, reference, targets = pair_batch()
        loss, _ = preference_loss(token_logprobs(logits, targets, PAD), reference, targets, torch.tensor([[0]]),
                                  torch.ones(1, 1), torch.tensor([[1]]), torch.ones(1, 1, 1),
                                  config(tlgd=False, mlgc=True, sft_weight=0.2, detach_levels=detach_levels), PAD)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(losses[1], abs=1e-7)


def test_detach_levels_must_not_be_negative():
    with pytest.raises(ValueError, match="detach_levels"):
        config(detach_levels=-1)


def test_tlgd_leaves_the_loss_value_unchanged():
    losses = []
    for tlgd in (False, True):
        logits, reference, targets = pair_batch()
        loss, _ = preference_loss(token_logprobs(logits, targets, PAD), reference, targets, torch.tensor([[0]]),
                                  torch.ones(1, 1), torch.tensor([[1]]), torch.ones(1, 1, 1), config(tlgd=tlgd), PAD)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(losses[1], abs=1e-7)


def test_prefix_detached_logprob_detaches_exactly_the_first_d_positions():
    token_logp = torch.randn(3, 5, requires_grad=True)
    prefix = torch.tensor([0, 2, 5])
    prefix_detached_logprob(token_logp, prefix).sum().backward()
    expected = (torch.arange(5).unsqueeze(0) >= prefix.unsqueeze(1)).float()
    assert torch.equal(token_logp.grad, expected)


def test_vanilla_dpo_is_minus_log_sigmoid_of_the_beta_scaled_log_ratio_margin():
    logits, reference, targets = pair_batch(seed=3)
    logp = token_logprobs(logits, targets, PAD)
    loss, _ = preference_loss(logp, reference, targets, torch.tensor([[0]]), torch.ones(1, 1), torch.tensor([[1]]),
                              torch.ones(1, 1, 1), config(tlgd=False, beta=0.3), PAD)
    ratio = (logp.sum(-1) - reference.sum(-1)).detach()
    expected = -F.logsigmoid(0.3 * (ratio[0] - ratio[1]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_reference_free_reward_is_length_normalised_with_margin():
    logits, _, targets = pair_batch(seed=4)
    targets = torch.tensor([[5, 9, EOS, PAD], [5, 7, 10, EOS]])
    logp = token_logprobs(logits, targets, PAD)
    loss, _ = preference_loss(logp, None, targets, torch.tensor([[0]]), torch.ones(1, 1), torch.tensor([[1]]),
                              torch.ones(1, 1, 1), config(tlgd=False, reference_free=True, beta=2.0, margin=0.4), PAD)
    total = logp.sum(-1).detach()
    expected = -F.logsigmoid(2.0 * total[0] / 3 - 2.0 * total[1] / 4 - 0.4)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_reference_mode_mismatch_is_an_error():
    logits, reference, targets = pair_batch()
    with pytest.raises(ValueError, match="reference_free"):
        preference_loss(token_logprobs(logits, targets, PAD), None, targets, torch.tensor([[0]]), torch.ones(1, 1),
                        torch.tensor([[1]]), torch.ones(1, 1, 1), config(reference_free=False), PAD)


def test_mlgc_raises_every_positive_and_lowers_every_negative():
    """Each positive has its own softmax: no positive is ever pushed down by another."""
    generator = torch.Generator().manual_seed(1)
    targets = torch.tensor([[5, 7, 9, EOS], [5, 8, 9, EOS], [6, 7, 9, EOS], [5, 7, 10, EOS], [6, 8, 11, EOS]])
    token_logp = (-torch.rand(5, 4, generator=generator) * 3).requires_grad_()
    reference = -torch.rand(5, 4, generator=generator) * 3
    loss, _ = preference_loss(token_logp, reference, targets, pos_index=torch.tensor([[0, 1, 2]]),
                              pos_weight=torch.tensor([[1.0, 0.5, 1.0]]), neg_index=torch.tensor([[3, 4]]),
                              pair_weight=torch.ones(1, 3, 2), config=config(mlgc=True, tlgd=False, sft_weight=0.1),
                              pad_id=PAD)
    loss.backward()
    sequence_grad = token_logp.grad.sum(-1)
    assert (sequence_grad[:3] < 0).all()
    assert (sequence_grad[3:] > 0).all()


def test_mlgc_softmax_matches_its_formula_and_padding_is_ignored():
    token_logp = torch.tensor([[-1.0, -0.5], [-2.0, -0.1], [-0.7, -0.3], [9.0, 9.0]])
    targets = torch.tensor([[5, EOS], [6, EOS], [7, EOS], [8, EOS]])
    weights = torch.tensor([[[1.0, 0.5]]])
    loss, _ = preference_loss(token_logp, None, targets, torch.tensor([[0, -1]]), torch.tensor([[2.0, 0.0]]),
                              torch.tensor([[1, 2]]), torch.cat([weights, weights], 1),
                              config(mlgc=True, tlgd=False, reference_free=True, beta=1.0, margin=0.2,
                                     sft_weight=0.5), PAD)
    r = token_logp.sum(-1) / 2
    contrast = -(r[0] - 0.2) + torch.log(torch.exp(r[0] - 0.2) + 1.0 * torch.exp(r[1]) + 0.5 * torch.exp(r[2]))
    assert float(loss) == pytest.approx(float(contrast + 0.5 * -r[0]), rel=1e-6)


def test_listwise_mlgc_matches_its_formula_with_positives_in_one_numerator():
    token_logp = torch.tensor([[-1.0, -0.5], [-2.0, -0.1], [-0.7, -0.3], [-1.5, -0.2]])
    targets = torch.tensor([[5, EOS], [6, EOS], [7, EOS], [8, EOS]])
    pair_weight = torch.tensor([[[1.0, 0.5], [0.5, 0.5]]])
    grades = torch.tensor([[1.0, 0.5]])
    loss, _ = preference_loss(token_logp, None, targets, torch.tensor([[0, 1]]), grades, torch.tensor([[2, 3]]),
                              pair_weight, config(mlgc=True, tlgd=False, reference_free=True, beta=1.0, margin=0.2,
                                                  sft_weight=0.5, contrast="listwise"), PAD)
    r = token_logp.sum(-1) / 2
    numerator = 1.0 * torch.exp(r[0] - 0.2) + 0.5 * torch.exp(r[1] - 0.2)
    mean_weight = (grades[0].unsqueeze(-1) * pair_weight[0]).sum(0) / grades.sum()
    contrast = -torch.log(numerator / (numerator + mean_weight[0] * torch.exp(r[2]) + mean_weight[1] * torch.exp(r[3])))
    sft = (1.0 * -r[0] + 0.5 * -r[1]) / 1.5
    assert float(loss) == pytest.approx(float(contrast + 0.5 * sft), rel=1e-6)


def test_listwise_tlgd_detaches_the_prefix_a_negative_shares_with_any_positive():
    targets = torch.tensor([[5, 7, 9, EOS], [6, 8, 9, EOS], [6, 8, 10, EOS]])   # negative shares (6, 8) with 2nd
    token_logp = (-torch.rand(3, 4, generator=torch.Generator().manual_seed(3)) - 0.1).requires_grad_()
    loss, _ = preference_loss(token_logp, torch.zeros(3, 4), targets, torch.tensor([[0, 1]]), torch.ones(1, 2),
                              torch.tensor([[2]]), torch.ones(1, 2, 1),
                              config(mlgc=True, tlgd=True, sft_weight=0.0, contrast="listwise"), PAD)
    loss.backward()
    assert torch.equal(token_logp.grad[2, :2], torch.zeros(2))
    assert (token_logp.grad[2, 2:] > 0).all()


def test_an_unknown_contrast_is_refused():
    with pytest.raises(ValueError, match="contrast"):
        config(contrast="pairwise_sum")


def test_rdrw_down_weighted_pair_contributes_less_to_pairwise_loss():
    logits, reference, targets = pair_batch()
    logp = token_logprobs(logits, targets, PAD)
    full, _ = preference_loss(logp, reference, targets, torch.tensor([[0]]), torch.ones(1, 1), torch.tensor([[1]]),
                              torch.ones(1, 1, 1), config(), PAD)
    half, _ = preference_loss(logp, reference, targets, torch.tensor([[0]]), torch.ones(1, 1), torch.tensor([[1]]),
                              torch.full((1, 1, 1), 0.5), config(), PAD)
    assert float(half) == pytest.approx(0.5 * float(full))


def test_rdrw_weights_are_one_during_warmup_then_fixed_quantiles():
    weighter = RewardWeighter(warmup_pairs=100, low_quantile=0.2, high_quantile=0.8, w_min=0.5)
    first = torch.linspace(-1, 1, 60)
    assert torch.equal(weighter(first), torch.ones(60))
    assert not weighter.ready
    weighter(torch.linspace(-1, 1, 40))
    assert weighter.ready
    bounds = weighter.bounds
    weighter(torch.full((1000,), 0.99))
    assert weighter.bounds == bounds


def test_rdrw_weights_are_monotone_non_increasing_and_hit_both_bounds():
    weighter = RewardWeighter(warmup_pairs=500, low_quantile=0.25, high_quantile=0.75, w_min=0.5)
    weighter.observe(torch.rand(500, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    grid = torch.linspace(-1.0, 1.0, 401)
    weights = weighter.weights(grid)
    assert (weights[1:] <= weights[:-1]).all()
    assert float(weights.max()) == 1.0 and float(weights.min()) == 0.5
    low, high = weighter.bounds
    assert (weights[grid <= low] == 1.0).all() and (weights[grid >= high] == 0.5).all()
    middle = (grid > low) & (grid < high)
    assert ((weights[middle] < 1.0) & (weights[middle] > 0.5)).all()


def test_rdrw_state_round_trips():
    weighter = RewardWeighter(warmup_pairs=10, low_quantile=0.1, high_quantile=0.9, w_min=0.5)
    weighter.observe(torch.arange(6.0))
    clone = RewardWeighter(warmup_pairs=10, low_quantile=0.1, high_quantile=0.9, w_min=0.5)
    clone.load_state_dict(weighter.state_dict())
    for w in (weighter, clone):
        w.observe(torch.arange(6.0, 12.0))
    assert clone.bounds == weighter.bounds and math.isfinite(clone.bounds[0])


@pytest.mark.parametrize("bad", [dict(warmup_pairs=0), dict(low_quantile=0.9, high_quantile=0.1), dict(w_min=0.0)])
def test_rdrw_rejects_bad_settings(bad):
    settings = dict(warmup_pairs=10, low_quantile=0.1, high_quantile=0.9, w_min=0.5)
    settings.update(bad)
    with pytest.raises(ValueError):
        RewardWeighter(**settings)
