"""RAD-DPO / vanilla DPO training of the generative retriever, starting from the SFT checkpoint.

Systems (one trainer, one loss; `SYSTEMS` maps a name to its switches):
- `rad_dpo`: the switches of params `align.loss` / `align.rdrw` (all on by default);
- `rad_dpo_no_tlgd`, `rad_dpo_no_rdrw`, `rad_dpo_no_mlgc`: the same with one part off;
- `dpo`: vanilla pairwise DPO — no TLGD, no RDRW, pairwise with one positive per pair.

The reference policy is a frozen copy of the SFT model; since it never changes, its token
log-probabilities of every mined sequence are computed once before training. Dropout is
off in the policy during alignment (as TRL's DPO does by default): with it on, the log
ratio log π − log π_ref is noise at step 0 instead of exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..generative.model import Seq2SeqRetriever
from ..generative.vocab import PAD
from .batches import Batch, PreferenceTensors, batch_similarity, sequence_forward
from .losses import PreferenceLossConfig, RewardWeighter, preference_loss

SYSTEMS: dict[str, dict[str, bool]] = {
    "rad_dpo": {},
    "rad_dpo_no_tlgd": {"tlgd": False},
    "rad_dpo_no_rdrw": {"rdrw": False},
    "rad_dpo_no_mlgc": {"mlgc": False},
    "dpo": {"tlgd": False, "rdrw": False, "mlgc": False},
}


@dataclass(frozen=True)
class AlignmentConfig:
    loss: PreferenceLossConfig
    rdrw: bool
    similarity: str

    @property
    def pairwise(self) -> bool:
        return not self.loss.mlgc

    @classmethod
    def for_system(cls, align: dict, system: str) -> "AlignmentConfig":
        if system not in SYSTEMS:
            raise ValueError(f"unknown alignment system {system!r}; expected one of {sorted(SYSTEMS)}")
        switches = SYSTEMS[system]
        loss = PreferenceLossConfig.from_params(align["loss"], tlgd=switches.get("tlgd"), mlgc=switches.get("mlgc"))
        rdrw = bool(align["rdrw"]["enabled"] if switches.get("rdrw") is None else switches["rdrw"])
        return cls(loss=loss, rdrw=rdrw, similarity=str(align["rdrw"]["similarity"]))


def alignment_loss(model: Seq2SeqRetriever, data: PreferenceTensors, batch: Batch, config: AlignmentConfig,
                   weighter: RewardWeighter | None) -> tuple[Tensor, dict[str, float]]:
    """Policy forward on the batch's sequences, RDRW weights, and `preference_loss`."""
    token_logp, hidden_at_eos = sequence_forward(model, data, batch)
    device = token_logp.device
    targets = data.targets[batch.rows].to(device)
    reference = None
    if not config.loss.reference_free:
        if data.reference_logp is None:
            raise ValueError("reference mode needs the reference log-probs (batches.with_reference)")
        reference = data.reference_logp[batch.rows].to(device)
    pos_index, neg_index = batch.pos_index.to(device), batch.neg_index.to(device)
    pair_valid = (pos_index >= 0).unsqueeze(-1) & (neg_index >= 0).unsqueeze(1)
    if config.rdrw:
        if weighter is None:
            raise ValueError("RDRW is on but no RewardWeighter was given")
        similarity = batch_similarity(data, batch, hidden_at_eos, config.similarity)
        weighter.observe(similarity[pair_valid])
        pair_weight = weighter.weights(similarity)
    else:
        pair_weight = torch.ones(pair_valid.shape, device=device)
    loss, diagnostics = preference_loss(token_logp, reference, targets, pos_index, batch.pos_weight.to(device),
                                        neg_index, pair_weight, config.loss, PAD)
    if config.rdrw and pair_valid.any():
        diagnostics["rdrw_mean_weight"] = float(pair_weight[pair_valid].mean())
    return loss, diagnostics
