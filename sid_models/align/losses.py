"""Preference losses over semantic-ID sequences: RAD-DPO (TLGD, RDRW, MLGC) and vanilla DPO.

Notation. A query q has positives y⁺ (judged relevant, grade weight g) and negatives y⁻
(judged non-relevant or the SFT model's own unjudged beam results). Each y is a decoder
target sequence of SID tokens ending in EOS (PAD after it). `log π(y|q) = Σ_t log π(y_t|q, y_<t)`
over the non-PAD tokens.

One loss covers every system of the alignment benchmark; three switches turn RAD-DPO's
parts on and off, and with all three off (and one positive, one negative per pair) it is
vanilla pairwise DPO:

- `tlgd`: the rejected sequence's tokens inside the prefix it shares with the chosen one
  enter under stop-gradient (`prefix_detached_logprob`);
- RDRW: per-(chosen, rejected) weights `w ∈ [w_min, 1]` from `RewardWeighter`; all ones
  when off;
- `mlgc`: per-positive softmax over {y⁺} ∪ negatives plus a global SFT term
  (`preference_loss`); off, each (y⁺, y⁻) pair is an independent Bradley–Terry term.

`detach_levels` k > 0 puts the first k tokens of every rejected sequence under stop-gradient
as well (TLGD's prefix becomes max(d, k)): a negative can then never push down the coarse
codes that decide which regions of the catalogue the served 100-SID beam explores, only its
finer choices inside them (README, alignment: the contrast, not the mining, costs the pool
its coverage).

Batches are flat: `token_logp [C, T]` for C candidate sequences, and per query the rows of
its positives `pos_index [Q, P]` and negatives `neg_index [Q, N]` (-1 pads).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def token_logprobs(logits: Tensor, targets: Tensor, pad_id: int) -> Tensor:
    """Per-token log-probabilities of the targets, zero at PAD.

    `logp[c, t] = log softmax(logits[c, t])[targets[c, t]] · [targets[c, t] ≠ PAD]`;
    logits [C, T, V], targets [C, T] -> [C, T].
    """
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree on [C, T]")
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * (targets != pad_id)


def sequence_logprob(token_logp: Tensor, targets: Tensor, pad_id: int, length_normalise: bool = False) -> Tensor:
    """`log π(y|q) = Σ_t logp[t]`, or `(1/|y|) Σ_t logp[t]` when `length_normalise` (|y| = non-PAD tokens)."""
    total = token_logp.sum(-1)
    if length_normalise:
        return total / (targets != pad_id).sum(-1).clamp(min=1)
    return total


def shared_prefix_length(chosen: Tensor, rejected: Tensor, pad_id: int) -> Tensor:
    """`d` = number of leading positions where two target sequences hold the same non-PAD token.

    Broadcasts over leading dimensions; chosen/rejected [..., T] -> [...]. Identical
    sequences give their full length (such a pair is rejected upstream by mining).
    """
    same = (chosen == rejected) & (chosen != pad_id)
    return torch.cumprod(same.long(), dim=-1).sum(-1)


def prefix_detached_logprob(token_logp: Tensor, prefix_len: Tensor) -> Tensor:
    """TLGD sequence log-prob of a rejected sequence: `Σ_{t<d} sg(logp[t]) + Σ_{t≥d} logp[t]`.

    Same value as the plain sum; the gradient through positions `t < d` is exactly zero,
    so pushing the rejected sequence down never pushes down the prefix it shares with the
    chosen one. token_logp [..., T], prefix_len [...] -> [...].
    """
    positions = torch.arange(token_logp.shape[-1], device=token_logp.device)
    live = positions >= prefix_len.unsqueeze(-1)
    return torch.where(live, token_logp, token_logp.detach()).sum(-1)


def sequence_reward(policy_logp: Tensor, reference_logp: Tensor | None, lengths: Tensor, beta: float) -> Tensor:
    """Implicit reward of a sequence.

    Reference mode: `r(y) = β (log π(y|q) − log π_ref(y|q))`, both summed over SID tokens.
    Reference-free mode (`reference_logp is None`, SimPO): `r(y) = (β / |y|) log π(y|q)`.
    """
    if reference_logp is None:
        return beta * policy_logp / lengths.clamp(min=1)
    return beta * (policy_logp - reference_logp)


CONTRASTS = ("per_positive", "listwise")


@dataclass(frozen=True)
class PreferenceLossConfig:
    """Switches and constants of `preference_loss` (params.yaml `align.loss`)."""

    beta: float
    margin: float           # γ: the chosen reward must beat the rejected by this (SimPO's margin)
    reference_free: bool
    tlgd: bool
    mlgc: bool
    sft_weight: float       # λ of MLGC's global SFT term
    contrast: str           # MLGC's form: per_positive | listwise (see preference_loss)
    detach_levels: int      # k: a rejected sequence's first k tokens enter under stop-gradient

    def __post_init__(self):
        if self.contrast not in CONTRASTS:
            raise ValueError(f"align.loss.contrast must be one of {CONTRASTS}, got {self.contrast!r}")
        if self.detach_levels < 0:
            raise ValueError(f"align.loss.detach_levels must be >= 0, got {self.detach_levels}")

    @classmethod
    def from_params(cls, loss: dict) -> "PreferenceLossConfig":
        return cls(beta=float(loss["beta"]), margin=float(loss["margin"]),
                   reference_free=bool(loss["reference_free"]), tlgd=bool(loss["tlgd"]), mlgc=bool(loss["mlgc"]),
                   sft_weight=float(loss["sft_weight"]), contrast=str(loss["contrast"]),
                   detach_levels=int(loss["detach_levels"]))


def preference_loss(token_logp: Tensor, reference_token_logp: Tensor | None, targets: Tensor,
                    pos_index: Tensor, pos_weight: Tensor, neg_index: Tensor, pair_weight: Tensor,
                    config: PreferenceLossConfig, pad_id: int) -> tuple[Tensor, dict[str, float]]:
    """The alignment loss of one batch, and diagnostics.

    Rewards: `r⁺_p = r(y⁺_p)`, `r⁻_pn = r(y⁻_n)` computed with `prefix_detached_logprob`
    relative to `y⁺_p` when `tlgd` (so `r⁻` is per pair), else with the plain sum; with
    `detach_levels` k the detached prefix is max(d, k) (k alone without TLGD). Values never change.
    `w_pn` = `pair_weight` (RDRW, or ones), `g_p` = `pos_weight` (grades, 0 on padding).

    MLGC (`mlgc`), per query, normalised over its positives:
        L_MLGC = Σ_p g_p · −log[ e^{r⁺_p − γ} / (e^{r⁺_p − γ} + Σ_n w_pn e^{r⁻_pn}) ] / Σ_p g_p
        L_SFT  = Σ_p g_p · −(1/|y⁺_p|) log π(y⁺_p|q) / Σ_p g_p
        L = mean_q L_MLGC + λ_sft · mean_q L_SFT
    Each positive has its own denominator: positives never compete with each other.

    Listwise MLGC (`contrast: listwise`, the multi-label form of the RAD-DPO paper), per query:
        L_MLGC = −log[ Σ_p g_p e^{r⁺_p − γ} / (Σ_p g_p e^{r⁺_p − γ} + Σ_n w̄_n e^{r⁻_n}) ]
    with `w̄_n = Σ_p g_p w_pn / Σ_p g_p` and, under TLGD, `r⁻_n` detached over the longest prefix
    `y⁻_n` shares with any positive; L_SFT as above. The positives share one numerator: the
    query is served when any relevant bucket comes first, so mass may move between them.

    Pairwise (`not mlgc`), over the valid (q, p, n) triples:
        L = Σ w_pn · −log σ(r⁺_p − r⁻_pn − γ) / #pairs
    (dividing by the pair count, not Σw, so a down-weighted pair really counts less).
    Vanilla DPO = pairwise, no TLGD, w ≡ 1, one positive and one negative per query.

    token_logp / reference_token_logp / targets: [C, T]; pos_index, pos_weight [Q, P];
    neg_index [Q, N]; pair_weight [Q, P, N]. -1 in an index tensor pads.
    """
    if config.reference_free != (reference_token_logp is None):
        raise ValueError(f"reference_free={config.reference_free} but reference log-probs "
                         f"{'given' if reference_token_logp is not None else 'missing'}")
    if pair_weight.shape != (*pos_index.shape, neg_index.shape[1]):
        raise ValueError(f"pair_weight {tuple(pair_weight.shape)} must be [Q, P, N] = "
                         f"{(*pos_index.shape, neg_index.shape[1])}")
    pos_valid, neg_valid = pos_index >= 0, neg_index >= 0
    pair_valid = pos_valid.unsqueeze(-1) & neg_valid.unsqueeze(1)
    lengths = (targets != pad_id).sum(-1)
    pos_rows, neg_rows = pos_index.clamp(min=0), neg_index.clamp(min=0)

    policy_seq = token_logp.sum(-1)
    reference_seq = None if reference_token_logp is None else reference_token_logp.sum(-1)
    pos_reward = sequence_reward(policy_seq[pos_rows], None if reference_seq is None else reference_seq[pos_rows],
                                 lengths[pos_rows], config.beta)                               # [Q, P]
    levels = config.detach_levels
    if config.tlgd:
        prefix = shared_prefix_length(targets[pos_rows].unsqueeze(2), targets[neg_rows].unsqueeze(1), pad_id)
        neg_tokens = token_logp[neg_rows].unsqueeze(1).expand(-1, pos_index.shape[1], -1, -1)
        neg_policy = prefix_detached_logprob(neg_tokens, prefix.clamp(min=levels))               # [Q, P, N]
    else:
        neg_seq = prefix_detached_logprob(token_logp, torch.full_like(lengths, levels)) if levels else policy_seq
        neg_policy = neg_seq[neg_rows].unsqueeze(1).expand(-1, pos_index.shape[1], -1)
    neg_reference = None if reference_seq is None else reference_seq[neg_rows].unsqueeze(1).expand_as(neg_policy)
    neg_reward = sequence_reward(neg_policy, neg_reference, lengths[neg_rows].unsqueeze(1).expand_as(neg_policy),
                                 config.beta)

    diagnostics: dict[str, float] = {}
    if pair_valid.any():
        with torch.no_grad():
            margins = (pos_reward.unsqueeze(-1) - neg_reward)[pair_valid]
            diagnostics.update(reward_chosen=float(pos_reward[pos_valid].mean()),
                               reward_rejected=float(neg_reward[pair_valid].mean()),
                               reward_accuracy=float((margins > 0).float().mean()))

    if config.mlgc and config.contrast == "listwise":
        return _listwise_contrast(token_logp, reference_seq, targets, lengths, pos_rows, pos_valid, pos_weight,
                                  pos_reward, neg_rows, neg_valid, pair_weight, pair_valid, config, pad_id,
                                  diagnostics)
    if config.mlgc:
        chosen = pos_reward - config.margin
        log_w = torch.log(pair_weight.clamp(min=torch.finfo(pair_weight.dtype).tiny))
        rejected = torch.where(pair_valid, neg_reward + log_w, torch.full_like(neg_reward, float("-inf")))
        per_positive = torch.logsumexp(torch.cat([chosen.unsqueeze(-1), rejected], dim=-1), dim=-1) - chosen
        grade = pos_weight * pos_valid
        has_pos = grade.sum(-1) > 0
        if not has_pos.any():
            raise ValueError("MLGC batch without any positive")
        norm = grade.sum(-1).clamp(min=torch.finfo(grade.dtype).tiny)
        contrast = ((per_positive * grade).sum(-1) / norm)[has_pos].mean()
        pos_nll = -token_logp[pos_rows].sum(-1) / lengths[pos_rows].clamp(min=1)
        sft = ((pos_nll * grade).sum(-1) / norm)[has_pos].mean()
        diagnostics.update(loss_contrast=float(contrast.detach()), loss_sft=float(sft.detach()))
        return contrast + config.sft_weight * sft, diagnostics

    if not pair_valid.any():
        raise ValueError("pairwise preference batch without any (positive, negative) pair")
    pair_loss = -F.logsigmoid(pos_reward.unsqueeze(-1) - neg_reward - config.margin)
    loss = (pair_loss * pair_weight)[pair_valid].sum() / pair_valid.sum()
    diagnostics["loss_pairwise"] = float(loss.detach())
    return loss, diagnostics


def _listwise_contrast(token_logp: Tensor, reference_seq: Tensor | None, targets: Tensor, lengths: Tensor,
                       pos_rows: Tensor, pos_valid: Tensor, pos_weight: Tensor, pos_reward: Tensor,
                       neg_rows: Tensor, neg_valid: Tensor, pair_weight: Tensor, pair_valid: Tensor,
                       config: PreferenceLossConfig, pad_id: int,
                       diagnostics: dict[str, float]) -> tuple[Tensor, dict[str, float]]:
    """The listwise MLGC loss of `preference_loss` (its docstring gives the formula)."""
    grade = pos_weight * pos_valid                                                              # [Q, P]
    has_pos = grade.sum(-1) > 0
    if not has_pos.any():
        raise ValueError("MLGC batch without any positive")
    norm = grade.sum(-1).clamp(min=torch.finfo(grade.dtype).tiny)
    if config.tlgd:
        prefix = shared_prefix_length(targets[pos_rows].unsqueeze(2), targets[neg_rows].unsqueeze(1), pad_id)
        longest = torch.where(pair_valid, prefix, torch.zeros_like(prefix)).max(dim=1).values    # [Q, N]
        neg_policy = prefix_detached_logprob(token_logp[neg_rows], longest.clamp(min=config.detach_levels))
    else:
        neg_policy = prefix_detached_logprob(token_logp[neg_rows],
                                             torch.full_like(neg_rows, config.detach_levels))
    neg_reward = sequence_reward(neg_policy, None if reference_seq is None else reference_seq[neg_rows],
                                 lengths[neg_rows], config.beta)                                   # [Q, N]
    neg_weight = (pair_weight * grade.unsqueeze(-1)).sum(1) / norm.unsqueeze(-1)
    tiny = torch.finfo(pos_reward.dtype).tiny
    chosen = torch.where(pos_valid & (grade > 0), pos_reward - config.margin + torch.log(grade.clamp(min=tiny)),
                         torch.full_like(pos_reward, float("-inf")))
    rejected = torch.where(neg_valid, neg_reward + torch.log(neg_weight.clamp(min=tiny)),
                           torch.full_like(neg_reward, float("-inf")))
    numerator = torch.logsumexp(chosen, dim=-1)
    per_query = torch.logsumexp(torch.cat([chosen, rejected], dim=-1), dim=-1) - numerator
    contrast = per_query[has_pos].mean()
    pos_nll = -token_logp[pos_rows].sum(-1) / lengths[pos_rows].clamp(min=1)
    sft = ((pos_nll * grade).sum(-1) / norm)[has_pos].mean()
    diagnostics.update(loss_contrast=float(contrast.detach()), loss_sft=float(sft.detach()))
    return contrast + config.sft_weight * sft, diagnostics


class RewardWeighter:
    """RDRW: weight of a (chosen, rejected) pair from their similarity s.

    The first `warmup_pairs` similarities seen fill a buffer (weights are 1 meanwhile);
    then the low/high quantiles (q_lo, q_hi) of the buffer are fixed for good and
        w(s) = 1                                   if s ≤ q_lo
             = w_min                               if s ≥ q_hi
             = 1 − (1 − w_min)(s − q_lo)/(q_hi − q_lo)  between,
    so a rejected sequence very close to the chosen one — likely an unlabelled positive
    among the pseudo-negatives — counts less. Monotone non-increasing in s.
    """

    def __init__(self, warmup_pairs: int, low_quantile: float, high_quantile: float, w_min: float):
        if warmup_pairs < 1:
            raise ValueError(f"RDRW warmup_pairs must be >= 1, got {warmup_pairs}")
        if not 0.0 <= low_quantile <= high_quantile <= 1.0:
            raise ValueError(f"RDRW needs 0 <= low_quantile ({low_quantile}) <= high_quantile ({high_quantile}) <= 1")
        if not 0.0 < w_min <= 1.0:
            raise ValueError(f"RDRW w_min must be in (0, 1], got {w_min}")
        self.warmup_pairs, self.w_min = int(warmup_pairs), float(w_min)
        self.low_quantile, self.high_quantile = float(low_quantile), float(high_quantile)
        self.buffer: list[float] = []
        self.bounds: tuple[float, float] | None = None

    @classmethod
    def from_params(cls, rdrw: dict) -> "RewardWeighter":
        return cls(rdrw["warmup_pairs"], rdrw["low_quantile"], rdrw["high_quantile"], rdrw["w_min"])

    @property
    def ready(self) -> bool:
        return self.bounds is not None

    def observe(self, similarity: Tensor) -> None:
        """Add similarities to the warm-up buffer; fixes the quantiles once it is full."""
        if self.ready:
            return
        room = self.warmup_pairs - len(self.buffer)
        self.buffer.extend(similarity.detach().flatten().float().cpu().tolist()[:room])
        if len(self.buffer) >= self.warmup_pairs:
            self.finish_warmup()

    def finish_warmup(self) -> None:
        """Fix the quantiles from the buffer as it is (fewer pairs than `warmup_pairs` exist)."""
        if self.ready:
            return
        if not self.buffer:
            raise ValueError("RDRW warm-up saw no (positive, negative) pair")
        values = np.asarray(self.buffer)
        self.bounds = (float(np.quantile(values, self.low_quantile)), float(np.quantile(values, self.high_quantile)))
        self.buffer = []

    def weights(self, similarity: Tensor) -> Tensor:
        """w(s) for each similarity (ones before the warm-up buffer is full)."""
        if not self.ready:
            return torch.ones_like(similarity)
        low, high = self.bounds
        if high <= low:
            return torch.where(similarity <= low, torch.ones_like(similarity), torch.full_like(similarity, self.w_min))
        fraction = ((similarity - low) / (high - low)).clamp(0.0, 1.0)
        return 1.0 - (1.0 - self.w_min) * fraction

    def __call__(self, similarity: Tensor) -> Tensor:
        self.observe(similarity)
        return self.weights(similarity)

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer), "bounds": self.bounds}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = list(state["buffer"])
        self.bounds = None if state["bounds"] is None else tuple(state["bounds"])


def pair_similarity(pos_vectors: Tensor, neg_vectors: Tensor) -> Tensor:
    """Cosine similarity of every (positive, negative) of each query: [Q, P, d] × [Q, N, d] -> [Q, P, N]."""
    return torch.einsum("qpd,qnd->qpn", F.normalize(pos_vectors.float(), dim=-1), F.normalize(neg_vectors.float(), dim=-1))
