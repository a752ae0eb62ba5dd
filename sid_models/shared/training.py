"""The training loop every trainer shares: optimiser, schedule, clipping, bf16, DDP, exact
resume and MLflow metrics, with its distributed context and command-line arguments. SFT
(sid_models.generative.train) and preference alignment (sid_models.align.trainer) bring their
own loss and data.

Exact resume: the example order is a pure function of (seed, epoch) through
`DistributedSampler`, batches are addressed by step, and the checkpoint holds model,
optimiser, scheduler and RNG states, so stopping at step k and resuming gives the same
parameters as running straight through.

Distributed: launched by `torchrun` (WORLD_SIZE > 1 in the environment) the loop joins a
process group (NCCL on CUDA, gloo on CPU), wraps the model in DDP and gives each rank
`batch_size / world_size` examples of the same global batch (DistributedSampler shards a
shared permutation); rank 0 alone logs and writes. Losses are means over examples, so the
gradient DDP averages equals the single-process gradient of the global batch.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from .. import tracking

TRAIN_STATE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------- distributed

@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str = "auto") -> "DistContext":
        """Join the torchrun process group when WORLD_SIZE > 1; pick the device.

        `device`: "auto" (CUDA when available), "cpu" or "cuda".
        """
        use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
        if use_cuda and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
            target = torch.device("cuda", local_rank)
        else:
            target = torch.device("cpu")
        if world_size > 1 and not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, device=target)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            value = value.detach().clone()
            torch_dist.all_reduce(value)
            value /= self.world_size
        return value

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()

    def close(self) -> None:
        if self.distributed and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


# ----------------------------------------------------------------------------- optimisation

@dataclass
class LoopConfig:
    steps: int
    batch_size: int            # global: summed over ranks
    lr: float
    weight_decay: float
    beta1: float
    beta2: float
    warmup_steps: int
    min_lr_ratio: float        # cosine decays to lr * min_lr_ratio
    grad_clip: float
    checkpoint_every: int
    log_every: int
    seed: int

    @classmethod
    def from_params(cls, section: dict, seed: int) -> "LoopConfig":
        keys = [name for name in cls.__dataclass_fields__ if name != "seed"]
        missing = [key for key in keys if key not in section]
        if missing:
            raise KeyError(f"training params lack {missing}")
        return cls(**{key: section[key] for key in keys}, seed=seed)


def make_optimizer(model: torch.nn.Module, config: LoopConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only (nanoGPT), never on biases and norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.lr, betas=(config.beta1, config.beta2))


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over `warmup_steps`, then cosine from 1 down to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, config: LoopConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.warmup_steps, config.steps, config.min_lr_ratio))


def fingerprint(*parts) -> str:
    """sha256 of the JSON of `parts` (params sections, configs, input digests): what a
    checkpoint was trained from, so a resume with anything else is refused."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def save_train_state(path: Path, model: torch.nn.Module, optimizer, scheduler, step: int, trained_from: str) -> None:
    """Everything exact resume needs, written to a temporary name and renamed (never half-written)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "trained_from": trained_from,
             "scheduler": scheduler.state_dict(), "step": step, "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def load_train_state(path: Path, model: torch.nn.Module, optimizer, scheduler, trained_from: str) -> int:
    """Restore a `save_train_state` file into live objects; returns the step to continue from.
    Refuses a state trained from other params or inputs (its `trained_from` fingerprint differs)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("trained_from") != trained_from:
        raise ValueError(f"{path} was trained from other params or inputs than this run's: resuming it would mix "
                         "two trainings (or keep the old model). Delete the folder or choose another output folder.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


@contextmanager
def system_metrics(device: torch.device):
    """MLflow system metrics (GPU utilisation and memory) for the active run, on CUDA only."""
    if device.type != "cuda" or not tracking.active():
        yield
        return
    import mlflow
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(mlflow.active_run().info.run_id)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]


def train_loop(model: torch.nn.Module, dataset, loss_fn: LossFn, config: LoopConfig, folder: str | Path,
               dist: DistContext, *, metric_prefix: str, trained_from: str, progress: bool = True,
               stop_at: int | None = None) -> list[dict]:
    """Train `model` for `config.steps` steps of `loss_fn`; resume from `folder/train_state.pt`
    when that state was trained from the same `trained_from` fingerprint (else refuse).

    `dataset`: has `__len__`, `set_epoch(e)` and `batch(indices) -> dict of tensors`.
    `loss_fn(model, batch) -> (scalar loss, {name: float or 0-d tensor})`, a mean over the batch's examples.
    `stop_at`: leave after this many steps (checkpointed), as a preempted job would; a later
    call continues. Returns the per-step metrics of this call (rank 0's view, loss averaged
    over ranks). Per-step metrics are appended to `folder/metrics.jsonl` at every log step, so
    a kill loses none that were logged; a resume first drops the lines past its checkpoint.
    """
    from tqdm import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if config.batch_size % dist.world_size:
        raise ValueError(f"batch_size {config.batch_size} not divisible by world size {dist.world_size}")
    local_batch = config.batch_size // dist.world_size
    sampler = DistributedSampler(range(len(dataset)), num_replicas=dist.world_size, rank=dist.rank,
                                 shuffle=True, seed=config.seed, drop_last=True)
    steps_per_epoch = len(sampler) // local_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} examples cannot fill one global batch of {config.batch_size}")
    model.to(dist.device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    state_path = folder / TRAIN_STATE
    step = load_train_state(state_path, model, optimizer, scheduler, trained_from) if state_path.is_file() else 0
    metrics_path = folder / METRICS_FILE
    if dist.is_main:
        kept = ([line for line in metrics_path.read_text().splitlines() if json.loads(line)["step"] <= step]
                if metrics_path.is_file() else [])
        metrics_path.write_text("".join(line + "\n" for line in kept))
    wrapped = (DistributedDataParallel(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
               if dist.distributed else model)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dist.device.type == "cuda" else nullcontext())
    last = config.steps if stop_at is None else min(stop_at, config.steps)
    history: list[dict] = []
    pending: list[dict] = []
    first_step = step
    epoch, order = None, None
    bar = tqdm(total=last, initial=step, desc=metric_prefix, disable=not (progress and dist.is_main),
               mininterval=5.0)
    model.train()
    with system_metrics(dist.device):
        started = time.perf_counter()
        while step < last:
            if step // steps_per_epoch != epoch:
                epoch = step // steps_per_epoch
                sampler.set_epoch(epoch)
                dataset.set_epoch(epoch)
                order = list(sampler)
            offset = (step % steps_per_epoch) * local_batch
            batch = {key: value.to(dist.device, non_blocking=True)
                     for key, value in dataset.batch(order[offset:offset + local_batch]).items()}
            with autocast:
                loss, metrics = loss_fn(wrapped, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            # Metrics stay on the device until the next log step: a host copy per step would
            # stall a GPU on every step.
            pending.append({"step": step, "loss": dist.mean(loss.detach().float()), "grad_norm": grad_norm.detach(),
                            "lr": scheduler.get_last_lr()[0], "epoch": epoch, **metrics})
            if dist.is_main:
                bar.update(1)
            if step % config.log_every == 0 or step == last or step % config.checkpoint_every == 0:
                logged = len(history)
                history.extend({key: float(value) if torch.is_tensor(value) else value for key, value in record.items()}
                               for record in pending)
                pending.clear()
                if dist.is_main:
                    record = dict(history[-1])
                    record["examples_per_s"] = (step - first_step) * config.batch_size / (time.perf_counter() - started)
                    history[-1]["examples_per_s"] = record["examples_per_s"]
                    with metrics_path.open("a") as handle:
                        handle.writelines(json.dumps(line) + "\n" for line in history[logged:])
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    tracking.log_metrics({f"{metric_prefix}/{key}": value for key, value in record.items()
                                          if key != "step"}, step=step)
            if step % config.checkpoint_every == 0 or step == last:
                if dist.is_main:
                    save_train_state(state_path, model, optimizer, scheduler, step, trained_from)
                dist.barrier()
    bar.close()
    return history


# ----------------------------------------------------------------------------- command line

def training_cli(description: str) -> argparse.ArgumentParser:
    """The arguments every trainer's command line shares (SFT here, alignment in sid_models.align)."""
    parser = argparse.ArgumentParser(description=f"{description} (runs under torchrun too)")
    parser.add_argument("--prepared", required=True, help="prepared_dataset folder")
    parser.add_argument("--sids", required=True, help="semantic_ids folder")
    parser.add_argument("--out", required=True, help="checkpoint folder (resumed when it holds train_state.pt)")
    parser.add_argument("--params", default=None, help="params.yaml (default: the repository's)")
    parser.add_argument("--overrides", default="{}", help="JSON merged over the params")
    parser.add_argument("--save-every-rank", action="store_true",
                        help="each rank also writes its final state_dict to model_rank<r>.pt (DDP consistency check)")
    return parser


def cli_params(args: argparse.Namespace) -> dict:
    from ..params import deep_merge, load_params

    return deep_merge(load_params(args.params), json.loads(args.overrides))


def run_distributed(params: dict, args: argparse.Namespace, threads: int,
                    train: Callable[[DistContext], torch.nn.Module]) -> None:
    """Join the torchrun process group (when launched so), train, write each rank's final
    state_dict when asked, and leave the group even on failure."""
    dist = DistContext.from_env(params["generative"]["device"])
    torch.set_num_threads(threads)
    try:
        model = train(dist)
        if args.save_every_rank:
            torch.save(model.state_dict(), Path(args.out) / f"model_rank{dist.rank}.pt")
    finally:
        dist.close()
