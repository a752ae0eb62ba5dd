"""RAD-DPO / vanilla DPO training of the generative retriever, starting from the SFT checkpoint.

Systems (one trainer, one loss): the rows of params `align.systems`, each a name and the
overrides it merges over `align` (`system_params`). The table holds
- `rad_dpo`: `align.loss` / `align.rdrw` / `align.mining` as they are (all parts on);
- `rad_dpo_no_tlgd`, `rad_dpo_no_rdrw`, `rad_dpo_no_mlgc`: the same with one part off;
- `dpo`: vanilla pairwise DPO — no TLGD, no RDRW, pairwise with one positive per pair;
- variants of the loss or the mining (SimPO's reference-free reward, the listwise contrast,
  pool-edge negatives): one row each, no code.

The reference policy is a frozen copy of the SFT model; since it never changes, its token
log-probabilities of every mined sequence are computed once before training. Dropout is
off in the policy during alignment (as TRL's DPO does by default): with it on, the log
ratio log π − log π_ref is noise at step 0 instead of exactly 0.

Command line (the same under torchrun; every rank mines the same seeded preferences):
  python -m sid_models.align.trainer --prepared P --sids S --sft C --out O [--system rad_dpo]
         [--towers T] [--overrides '{"align": {"train": {"epochs": 1}}}']
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .. import tracking
from ..data.schema import PreparedDataset
from ..generative.data import read_sid_table
from ..generative.inputs import EncoderReader
from ..generative.model import GenerativeConfig, Seq2SeqRetriever, save_model
from ..shared.training import (DistContext, LoopConfig, cli_params, fingerprint, run_distributed, train_loop,
                               training_cli)
from ..generative.trie import SidTrie
from ..generative.vocab import PAD, SidVocab
from ..params import deep_merge
from ..sci.stage import ITEM_VIEW_FILE as SCI_ITEM_VIEW_FILE
from ..sci.stage import QUERIES_FILE as SCI_QUERIES_FILE
from ..sci.stage import QUERY_VIEW_FILE as SCI_ITEM_QUERIES_FILE
from ..text.encoder import cache_path
from ..text.views import ViewConfig
from .batches import (PreferenceDataset, PreferenceTensors, SequenceScorer, batch_similarity,
                      build_preference_tensors, pair_mask, reference_logprobs, score_batch,
                      with_reference)
from .losses import PreferenceLossConfig, RewardWeighter, preference_loss
from .mining import (beam_sids, mine_preferences, mine_view_preferences, mining_beam_size, preference_query_ids,
                     view_queries)


def system_names(params: dict) -> tuple[str, ...]:
    return tuple(params["align"]["systems"])


def system_params(params: dict, system: str) -> dict:
    """`params` with the system's row of `align.systems` merged over `align`."""
    systems = params["align"]["systems"]
    if system not in systems:
        raise ValueError(f"unknown alignment system {system!r}; align.systems has {sorted(systems)}")
    return deep_merge(params, {"align": systems[system] or {}})


def mining_of(params: dict, system: str) -> dict:
    """The `align.mining` section a system mines with (systems that share it share one table)."""
    return system_params(params, system)["align"]["mining"]


@dataclass(frozen=True)
class AlignmentConfig:
    loss: PreferenceLossConfig
    rdrw: bool
    similarity: str

    @property
    def pairwise(self) -> bool:
        return not self.loss.mlgc

    @classmethod
    def for_system(cls, params: dict, system: str) -> "AlignmentConfig":
        align = system_params(params, system)["align"]
        return cls(loss=PreferenceLossConfig.from_params(align["loss"]), rdrw=bool(align["rdrw"]["enabled"]),
                   similarity=str(align["rdrw"]["similarity"]))


def alignment_loss(scorer: torch.nn.Module, batch: dict[str, Tensor], config: AlignmentConfig,
                   weighter: RewardWeighter | None) -> tuple[Tensor, dict[str, float]]:
    """Score the batch's sequences with the policy, weight pairs by RDRW, apply `preference_loss`."""
    token_logp, hidden_at_eos = score_batch(scorer, batch)
    reference = None
    if not config.loss.reference_free:
        if "reference_logp" not in batch:
            raise ValueError("reference mode needs the reference log-probs (batches.with_reference)")
        reference = batch["reference_logp"]
    valid = pair_mask(batch)
    if config.rdrw:
        if weighter is None or not weighter.ready:
            raise ValueError("RDRW is on but its weighter has not finished warm-up (see rdrw_warmup)")
        pair_weight = weighter.weights(batch_similarity(batch, hidden_at_eos, config.similarity))
    else:
        pair_weight = torch.ones(valid.shape, device=token_logp.device)
    loss, diagnostics = preference_loss(token_logp, reference, batch["targets"], batch["pos_index"],
                                        batch["pos_weight"], batch["neg_index"], pair_weight, config.loss, PAD)
    if config.rdrw and valid.any():
        diagnostics["rdrw_mean_weight"] = float(pair_weight[valid].mean())
    return loss, diagnostics


@torch.no_grad()
def rdrw_warmup(policy: Seq2SeqRetriever, dataset: PreferenceDataset, config: AlignmentConfig,
                weighter: RewardWeighter, batch_size: int, seed: int) -> None:
    """Fill RDRW's buffer with the starting (SFT) policy's pair similarities, then fix its quantiles.

    The buffer is filled before training from a seeded query order rather than online: the
    quantiles are then a function of the SFT checkpoint and the seed alone, identical on
    every DDP rank and after a resume (an online buffer would differ per rank and would
    have to be checkpointed mid-warm-up).
    """
    scorer = SequenceScorer(policy).eval()
    device = next(policy.parameters()).device
    order = np.random.default_rng(seed).permutation(len(dataset))
    for start in range(0, len(order), batch_size):
        batch = {key: value.to(device) for key, value in dataset.batch(order[start:start + batch_size]).items()}
        _, hidden_at_eos = score_batch(scorer, batch)
        weighter.observe(batch_similarity(batch, hidden_at_eos, config.similarity)[pair_mask(batch)])
        if weighter.ready:
            return
    weighter.finish_warmup()


class AlignmentObjective:
    """`loss_fn(model, batch)` for `train_loop`."""

    def __init__(self, config: AlignmentConfig, weighter: RewardWeighter | None):
        self.config, self.weighter = config, weighter

    def __call__(self, scorer: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        return alignment_loss(scorer, batch, self.config, self.weighter)


def load_policy(sft_folder: str | Path, device: torch.device | str = "cpu") -> tuple[Seq2SeqRetriever, SidVocab]:
    """The SFT model with dropout off (see module docstring) and its decoder vocabulary."""
    sft_folder = Path(sft_folder)
    for name in ("model.pt", "config.json", "vocab.json"):
        if not (sft_folder / name).is_file():
            raise FileNotFoundError(f"SFT checkpoint {sft_folder} lacks {name}")
    config = GenerativeConfig.from_dict(json.loads((sft_folder / "config.json").read_text()))
    policy = Seq2SeqRetriever(replace(config, dropout=0.0))
    policy.load_state_dict(torch.load(sft_folder / "model.pt", map_location="cpu", weights_only=True))
    return policy.to(device), SidVocab.load(sft_folder)


def sid_vectors(sid_table: pd.DataFrame, item_ids: pd.Series, item_vectors: np.ndarray) -> dict[tuple, np.ndarray]:
    """SID -> mean (re-normalised) item vector of the items it names (a SARQ bucket may hold several)."""
    if len(item_ids) != len(item_vectors):
        raise ValueError(f"{len(item_vectors)} item vectors for {len(item_ids)} items")
    row_of_item = pd.Series(np.arange(len(item_ids)), index=item_ids.astype(str).to_numpy())
    grouped: dict[tuple, list[int]] = {}
    for item_id, sid in zip(sid_table["item_id"].astype(str), sid_table["sid"]):
        if item_id in row_of_item.index:
            grouped.setdefault(tuple(int(c) for c in sid), []).append(int(row_of_item[item_id]))
    vectors = {}
    for sid, rows in grouped.items():
        mean = item_vectors[rows].mean(axis=0)
        vectors[sid] = mean / max(float(np.linalg.norm(mean)), np.finfo(np.float32).tiny)
    return vectors


def prepare_preferences(params: dict, system: str, prepared: PreparedDataset, sft_folder: str | Path,
                        sids_folder: str | Path, device: torch.device | str = "cpu",
                        towers: str | Path | None = None) -> tuple[pd.DataFrame, PreferenceTensors]:
    """Mine `system`'s preferences (its `align.mining`) with the SFT model's beam and tensorise
    them with the reference log-probs: the training queries', then the view queries' (`view_items`).

    `towers`, the sci_towers folder, is read where the system needs it: `item_item_view.npy` for
    the sci_item RDRW similarity, and for a policy with a query-vector memory position
    `queries.npy` (f_q of every query) and, for view queries, `item_query_view.npy` (a view
    query reads its item's f_q(item), as the SFT indexing task does).
    """
    def tower_file(name: str, rows: int, why: str) -> np.ndarray:
        if towers is None:
            raise ValueError(f"{why}: give the sci_towers folder (towers=...)")
        vectors = np.load(Path(towers) / name)
        if len(vectors) != rows:
            raise ValueError(f"{Path(towers) / name} has {len(vectors)} rows, the dataset {rows}")
        return np.asarray(vectors, dtype=np.float32)

    align = system_params(params, system)["align"]
    policy, vocab = load_policy(sft_folder, device)
    policy.eval()
    table = read_sid_table(sids_folder, None)
    item_sid = {item: tuple(int(c) for c in sid) for item, sid in zip(table["item_id"], table["sid"])}
    trie = SidTrie.build(list(item_sid.values()), vocab)
    with_judged_queries = bool(align["mining"]["judged_queries"])
    preference_ids = set(preference_query_ids(prepared, align["mining"], int(align["seed"])))
    trained = prepared.queries["query_id"].astype(str).isin(preference_ids) & with_judged_queries
    queries = prepared.queries[trained].reset_index(drop=True)
    views = view_queries(prepared, align["mining"], ViewConfig.from_params(params["sft"]["indexing_views"],
                                                                           "sft.indexing_views"), int(align["seed"]))
    if not with_judged_queries and views.empty:
        raise ValueError(f"alignment system {system!r}: align.mining.judged_queries is false and there are no view "
                         f"queries (view_items {align['mining']['view_items']}), so nothing is left to mine")
    query_vectors = None
    if policy.config.query_vector_dim:
        why = f"the SFT model of {sft_folder} reads SCI query vectors"
        query_vectors = tower_file(SCI_QUERIES_FILE, len(prepared.queries), why)[trained.to_numpy()]
        if len(views):
            item_queries = tower_file(SCI_ITEM_QUERIES_FILE, len(prepared.items), why)
            query_vectors = np.concatenate([query_vectors, item_queries[views["item_row"].to_numpy(dtype=np.int64)]])
    sources = EncoderReader.for_model(policy.config, params["text"], cache_path(params["text"])).read(
        queries["text"].astype(str).tolist() + views["text"].tolist(), desc="preference queries")
    beams = beam_sids(policy, trie, sources, mining_beam_size(align["mining"]),
                      int(params["decode"]["batch_size"]), float(params["decode"]["length_penalty"]), query_vectors)
    query_ids = queries["query_id"].astype(str).tolist() + views["query_id"].tolist()
    beam_of = dict(zip(query_ids, beams))
    mined = []   # an empty frame would turn the concatenated columns into objects
    if with_judged_queries:
        mined.append(mine_preferences(prepared, item_sid, beam_of, align["mining"], seed=int(align["seed"])))
    if not views.empty:
        mined.append(mine_view_preferences(views, item_sid, beam_of, align["mining"]))
    preferences = pd.concat(mined, ignore_index=True)
    vectors = None
    if align["rdrw"]["enabled"] and align["rdrw"]["similarity"] == "sci_item":
        item_vectors = tower_file(SCI_ITEM_VIEW_FILE, len(prepared.items), "align.rdrw.similarity is sci_item")
        vectors = sid_vectors(table, prepared.items["item_id"], item_vectors)
    data = build_preference_tensors(preferences, vocab, query_ids, sources, policy.config.max_dec_len,
                                    sid_vectors=vectors,
                                    query_vectors=None if query_vectors is None else torch.from_numpy(query_vectors))
    return preferences, with_reference(data, reference_logprobs(policy, data, int(align["train"]["batch_size"])))


def train_alignment(params: dict, system: str, data: PreferenceTensors, sft_folder: str | Path, out: str | Path,
                    dist: DistContext | None = None, progress: bool = True, stop_at: int | None = None,
                    seed: int | None = None) -> tuple[Seq2SeqRetriever, list[dict]]:
    """Align the SFT model of `sft_folder` as `system` into `out` (model.pt, config.json,
    vocab.json, train_state.pt, metrics.jsonl, rdrw.json when RDRW is on); resumes from
    `out/train_state.pt`. `seed` overrides `align.seed` (benchmark seeds). `data` must be mined
    with the system's `align.mining` (`mining_of`)."""
    config = AlignmentConfig.for_system(params, system)
    align = system_params(params, system)["align"]
    dist = dist or DistContext.from_env(params["generative"]["device"])
    seed = int(align["seed"] if seed is None else seed)
    out = Path(out)
    policy, vocab = load_policy(sft_folder, dist.device)
    dataset = PreferenceDataset(data, pairwise=config.pairwise, seed=seed)
    section = {key: value for key, value in align["train"].items() if key != "epochs"}
    batches_per_epoch = len(dataset) // int(section["batch_size"])
    if batches_per_epoch == 0:
        raise ValueError(f"{len(dataset)} trainable queries cannot fill one batch of {section['batch_size']}")
    loop = LoopConfig.from_params({**section, "steps": int(align["train"]["epochs"]) * batches_per_epoch}, seed=seed)
    torch.manual_seed(seed)
    weighter = None
    if config.rdrw:
        weighter = RewardWeighter.from_params(align["rdrw"])
        rdrw_warmup(policy, dataset, config, weighter, loop.batch_size, seed)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "vocab.json").write_text(json.dumps(vocab.to_json()))
        if weighter is not None:
            (out / "rdrw.json").write_text(json.dumps({"low": weighter.bounds[0], "high": weighter.bounds[1]}))
        tracking.log_params({"system": system, "steps": loop.steps, "n_queries": len(dataset),
                             "tlgd": config.loss.tlgd, "rdrw": config.rdrw, "mlgc": config.loss.mlgc,
                             "beta": config.loss.beta, "reference_free": config.loss.reference_free,
                             "margin": config.loss.margin, "contrast": config.loss.contrast,
                             "positive_weight": align["mining"]["positive_weight"],
                             "pseudo_negatives": align["mining"]["pseudo_negatives"]},
                            prefix=f"align_{system}")
    sft_weights = hashlib.sha256((Path(sft_folder) / "model.pt").read_bytes()).hexdigest()
    trained_from = fingerprint("align", system, repr(config), loop.__dict__, align["rdrw"], align["mining"],
                               sft_weights, len(data.targets), float(data.weight.sum()), data.query_ids[:5])
    history = train_loop(SequenceScorer(policy), dataset, AlignmentObjective(config, weighter), loop, out, dist,
                         metric_prefix=f"align_{system}", trained_from=trained_from, progress=progress,
                         stop_at=stop_at)
    if dist.is_main:
        save_model(policy, out)
    return policy, history


def main(argv: list[str] | None = None) -> None:
    parser = training_cli("Preference alignment of an SFT checkpoint")
    parser.add_argument("--sft", required=True, help="sft_checkpoint folder (the starting and reference policy)")
    parser.add_argument("--system", default="rad_dpo", help="a row of params align.systems")
    parser.add_argument("--towers", default=None, help="sci_towers folder: item vectors for the sci_item similarity, "
                                                         "query vectors (queries', and items' for view queries) "
                                                         "for an SFT model that reads them")
    args = parser.parse_args(argv)
    params = cli_params(args)

    def train(dist: DistContext) -> Seq2SeqRetriever:
        _, data = prepare_preferences(params, args.system, PreparedDataset.load(args.prepared), args.sft, args.sids,
                                      dist.device, towers=args.towers)
        return train_alignment(params, args.system, data, args.sft, args.out, dist=dist)[0]

    run_distributed(params, args, int(params["align"]["threads"]), train)


if __name__ == "__main__":
    main()
