"""Losses of the SCI dual towers. All vectors are L2-normalised, so dot products are cosines.

L = L_main + λ_swap · L_swap + λ_cons · L_cons + λ_pres · L_pres, where
L_main = contrast(f_q(query), f_i(item)), L_swap = contrast(f_i(query), f_q(item)) (the
same objective with the inputs swapped between towers: no new parameters), contrast being
`info_nce` (the default) or the SCI paper's `triplet` margin loss (params sci.train.loss),
L_cons = consistency(f_q(x), f_i(x)) and L_pres = preservation(f(x), f_0(x)).
"""
from __future__ import annotations

import torch


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, weights: torch.Tensor, temperature: float,
             accidental_hits: torch.Tensor | None = None, hard_negatives: torch.Tensor | None = None,
             hard_negative_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted in-batch softmax loss with accidental-hit masking and extra hard negatives.

    For pair b with anchor a_b, positive p_b, hard negatives n_bh (mask m_bh) and s = a·p / τ:

        ℓ_b = −log  exp(s_bb) / ( Σ_{j : ¬A_bj} exp(a_b·p_j / τ) + Σ_h m_bh exp(a_b·n_bh / τ) )
        L   = Σ_b w_b ℓ_b / Σ_b w_b

    A_bj (`accidental_hits`, [B, B], diagonal ignored) marks in-batch positives p_j (j ≠ b)
    that are themselves relevant to anchor b's query: they are removed from b's denominator
    instead of being pushed away. `weights` w_b grade pairs by relevance. `hard_negatives`
    [B, H, d] are judged low-relevance items of b's query.
    """
    logits = anchors @ positives.T / temperature
    if accidental_hits is not None:
        off_diagonal = accidental_hits & ~torch.eye(len(anchors), dtype=torch.bool, device=anchors.device)
        logits = logits.masked_fill(off_diagonal, float("-inf"))
    if hard_negatives is not None:
        hard_logits = torch.einsum("bd,bhd->bh", anchors, hard_negatives) / temperature
        if hard_negative_mask is not None:
            hard_logits = hard_logits.masked_fill(~hard_negative_mask, float("-inf"))
        logits = torch.cat([logits, hard_logits], dim=1)
    per_pair = torch.logsumexp(logits, dim=1) - logits.diagonal()[: len(anchors)]
    return (weights * per_pair).sum() / weights.sum()


def triplet(anchors: torch.Tensor, positives: torch.Tensor, weights: torch.Tensor, margin: float,
            accidental_hits: torch.Tensor | None = None, hard_negatives: torch.Tensor | None = None,
            hard_negative_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted triplet margin loss (the SCI paper's L_original) over in-batch and hard negatives.

    For pair b with anchor a_b, positive p_b and its negatives N_b (the other in-batch
    positives p_j that are not accidental hits, A_bj as in `info_nce`, and the hard negatives
    n_bh with mask m_bh), all unit vectors, so each dot product is a cosine:

        ℓ_b = mean_{n ∈ N_b} max(0, δ − a_b·p_b + a_b·n)
        L   = Σ_b w_b ℓ_b / Σ_b w_b

    δ is `margin`. A pair without any negative contributes 0.
    """
    similarities = anchors @ positives.T
    valid = ~torch.eye(len(anchors), dtype=torch.bool, device=anchors.device)
    if accidental_hits is not None:
        valid = valid & ~accidental_hits
    if hard_negatives is not None:
        similarities = torch.cat([similarities, torch.einsum("bd,bhd->bh", anchors, hard_negatives)], dim=1)
        hard_valid = (hard_negative_mask if hard_negative_mask is not None
                      else torch.ones(hard_negatives.shape[:2], dtype=torch.bool, device=anchors.device))
        valid = torch.cat([valid, hard_valid], dim=1)
    positive = similarities.diagonal()[: len(anchors)].unsqueeze(1)
    hinges = (margin - positive + similarities).clamp(min=0) * valid
    per_pair = hinges.sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return (weights * per_pair).sum() / weights.sum()


def consistency(query_view: torch.Tensor, item_view: torch.Tensor) -> torch.Tensor:
    """L_cons = mean_x ‖f_q(x) − f_i(x)‖² over the rows x (queries and items alike)."""
    return (query_view - item_view).pow(2).sum(dim=1).mean()


def preservation(current: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """L_pres = mean_x ‖f(x) − f_0(x)‖², f_0 the untrained tower (≈ projected MiniLM): keeps unseen items' geometry."""
    return (current - anchor).pow(2).sum(dim=1).mean()
