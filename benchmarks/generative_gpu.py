"""GPU check of the generative retriever: the `gpu` preset's SFT throughput, decoding speed and
(resolved back on the CPU machine) its retrieval quality on Home Depot.

A GPU machine gets the pipeline's own prepared_dataset and semantic_ids folders (built on the
CPU machine by benchmarks/generative.py), not the catalogue's text features, so the script
splits in two:

`train` (on the GPU machine):
  1. a short probe run of the `gpu` preset measures steps/s;
  2. the real run gets as many steps as fit `--train-seconds` (full warm-up + cosine schedule
     over them), trained in two calls so the second resumes from the first's checkpoint;
  3. decoding: the test queries' top SIDs (saved to `test_sids.npz`, since resolving SIDs to
     items needs the SCI item views the GPU machine does not have), the unconstrained
     invalid-SID rate, and `decode_tensor` vs `decode_reference` speed (generative.py's `speed`);
  4. with `--mlflow-uri`, everything runs inside an MLflow run, and the GPU system metrics that
     `train_loop` records are summarised.
`resolve` (on the CPU machine): the saved SIDs through the CPU chain's retriever buckets
(SCI-ordered) and the shared `evaluate`: recall@10, ndcg@10, cold/seen recall.
`evaluate` (on the CPU machine): a whole model trained on the GPU machine with
`python -m sid_models.generative.train` (any preset, SIDs of any chain), through the standard
retriever, as generative.py evaluates its own models.

  python benchmarks/generative_gpu.py train --prepared P --sids S --out O --train-seconds 300 [--mlflow-uri U]
  .venv/bin/python benchmarks/generative_gpu.py resolve --npz O/test_sids.npz
  .venv/bin/python benchmarks/generative_gpu.py evaluate --checkpoint C --name N [--variant tiger] [--overrides J]

The GPU machine needs torch (CUDA), transformers, pandas, pyarrow and PyYAML, plus MLflow for
--mlflow-uri; of the MiniLM package only the tokenizer files and the word-embedding matrix are
read (the encoder's initialisation), never the sentence model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log, test_metrics, test_queries  # noqa: E402  (sets sys.path for sid_models)
from generative import EVAL_K, quality, speed  # noqa: E402

from sid_models.data.schema import PreparedDataset  # noqa: E402
from sid_models.generative.model import load_model  # noqa: E402
from sid_models.generative.retriever import SidDecoder, catalogue_sids  # noqa: E402
from sid_models.generative.stage import sid_validity  # noqa: E402
from sid_models.generative.train import loop_config, train_sft  # noqa: E402
from sid_models.shared.training import DistContext  # noqa: E402
from sid_models.generative.trie import SidTrie  # noqa: E402
from sid_models.generative.vocab import SidVocab  # noqa: E402
from sid_models.params import deep_merge, load_params  # noqa: E402
from sid_models.generative.inputs import EncoderReader  # noqa: E402

BENCH = "generative_gpu"
PROBE_STEPS = 60
SYSTEM_METRICS = ("gpu_0_utilization_percentage", "gpu_0_memory_usage_megabytes", "gpu_0_memory_usage_percentage",
                  "gpu_0_power_usage_watts")


def gpu_params(device: str, preset: str) -> dict:
    """params for the device run. The token-only model (no query-vector memory): the device
    bundle carries neither MiniLM nor the SCI vectors that position would need at decode time."""
    return deep_merge(load_params(), {"generative": {"preset": preset, "device": device, "query_vector": False}})


def with_steps(params: dict, steps: int) -> dict:
    preset = params["generative"]["preset"]
    warmup = min(int(params["sft"]["warmup_steps"]), max(1, steps // 10))
    return deep_merge(params, {"generative": {"presets": {preset: {"sft": {"steps": steps}}}},
                               "sft": {"warmup_steps": warmup}})


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_training(params: dict, prepared: PreparedDataset, sids: Path, out: Path, dist: DistContext,
                   stop_at: int | None = None) -> tuple[float, int]:
    """(seconds in the training loop's steps, steps run) of one `train_sft` call."""
    _, history = train_sft(params, prepared, sids, out, None, dist=dist, progress=False, stop_at=stop_at)
    synchronize(dist.device)
    last = history[-1]
    seconds = len(history) * loop_config(params).batch_size / last["examples_per_s"]
    return seconds, len(history)


def probe(args: argparse.Namespace) -> tuple[int, float]:
    """(steps of the real run: as many as fit --train-seconds, capped at the preset's; probe steps/s)."""
    params = gpu_params(args.device, args.preset)
    dist = DistContext.from_env(args.device)
    seconds, steps = timed_training(with_steps(params, PROBE_STEPS), PreparedDataset.load(args.prepared),
                                    Path(args.sids), Path(args.out) / "probe", dist)
    steps_per_s = steps / seconds
    budget = max(2, min(int(params["generative"]["presets"][args.preset]["sft"]["steps"]),
                        int(args.train_seconds * steps_per_s)))
    log(f"[{BENCH}] probe: {steps_per_s:.1f} steps/s at batch {loop_config(params).batch_size} -> {budget} steps")
    return budget, steps_per_s


def train(args: argparse.Namespace, steps: int, probe_steps_per_s: float) -> None:
    out = Path(args.out)
    params = with_steps(gpu_params(args.device, args.preset), steps)
    dist = DistContext.from_env(args.device)
    prepared = PreparedDataset.load(args.prepared)
    batch = loop_config(params).batch_size
    model_dir = out / "model"
    first_seconds, first_steps = timed_training(params, prepared, Path(args.sids), model_dir, dist, stop_at=steps // 2)
    second_seconds, second_steps = timed_training(params, prepared, Path(args.sids), model_dir, dist)
    train_seconds = first_seconds + second_seconds
    figures = {"steps": first_steps + second_steps, "batch": batch, "train_seconds": round(train_seconds, 1),
               "sequences_per_s": round((first_steps + second_steps) * batch / train_seconds, 1),
               "probe_sequences_per_s": round(probe_steps_per_s * batch, 1), "resumed_at": first_steps,
               "device": torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu",
               "peak_memory_mib": (round(torch.cuda.max_memory_allocated(dist.device) / 2**20)
                                   if dist.device.type == "cuda" else None)}
    final_loss = [json.loads(line)["loss"] for line in (model_dir / "metrics.jsonl").read_text().splitlines()[-20:]]
    emit(BENCH, "sft_gpu", final_loss=round(float(np.mean(final_loss)), 4), **figures)

    model = load_model(model_dir, map_location=dist.device)
    vocab = SidVocab.load(model_dir)
    _, item_sids = catalogue_sids(args.sids, args.prepared, None)
    decode = params["decode"]
    decoder = SidDecoder(model, EncoderReader.for_model(model.config, params["text"]), SidTrie.build(item_sids, vocab), int(decode["beam_size"]),
                         float(decode["length_penalty"]), int(decode["batch_size"]), device=dist.device)
    queries = test_queries(prepared)
    texts = queries["text"].astype(str).tolist()
    decoder.search_sids(texts[:decoder.batch_size], EVAL_K)                                    # warm-up
    synchronize(dist.device)
    started = time.perf_counter()
    found_sids, found_scores = decoder.search_sids(texts, EVAL_K)
    synchronize(dist.device)
    search_seconds = time.perf_counter() - started
    np.savez(out / "test_sids.npz", query_id=queries["query_id"].to_numpy(dtype=str), sids=found_sids,
             scores=found_scores, sids_folder=np.array(Path(args.sids).resolve().name))
    emit(BENCH, "search_sids_gpu", n_queries=len(texts), batch=decoder.batch_size, beams=decoder.beam_size,
         qps=round(len(texts) / search_seconds, 1),
         **{key: round(value, 4) for key, value in sid_validity(decoder, texts).items()})
    speed(decoder, texts, n_batches=args.speed_batches, n_single=16 * args.speed_batches)


def system_metrics_summary(run_id: str) -> dict:
    """Mean and max of the GPU system metrics MLflow recorded for the run."""
    from mlflow import MlflowClient

    client = MlflowClient()
    summary = {}
    for name in SYSTEM_METRICS:
        values = [metric.value for metric in client.get_metric_history(run_id, f"system/{name}")]
        if values:
            summary[name] = {"mean": round(float(np.mean(values)), 1), "max": round(float(np.max(values)), 1),
                             "samples": len(values)}
    return summary


def train_tracked(args: argparse.Namespace) -> None:
    import mlflow

    steps, steps_per_s = probe(args)
    mlflow.set_tracking_uri(args.mlflow_uri)
    mlflow.set_experiment(BENCH)
    with mlflow.start_run(run_name="gpu_preset_sft") as run:
        train(args, steps, steps_per_s)
    summary = system_metrics_summary(run.info.run_id)
    if not summary and args.device == "cuda":
        raise RuntimeError(f"MLflow run {run.info.run_id} has no GPU system metrics")
    emit(BENCH, "mlflow_system_metrics", run_id=run.info.run_id, **summary)


def resolve(args: argparse.Namespace) -> None:
    """Item-level quality of SIDs decoded elsewhere, through this machine's benchmark chain."""
    from common import HOME_DEPOT, benchmark_params, bucket_pool, run_chain

    from sid_models.generative.retriever import load_retriever

    params = benchmark_params(argparse.Namespace(data=str(HOME_DEPOT)))
    folders = run_chain(params, False, ("sft_checkpoint",), BENCH, build=False)
    saved = np.load(args.npz)
    if str(saved["sids_folder"]) != folders["semantic_ids"].resolve().name:
        raise ValueError(f"{args.npz} indexes the trie of {saved['sids_folder']}, this chain's SIDs are "
                         f"{folders['semantic_ids'].resolve().name}: decode again with this chain's folders")
    prepared = PreparedDataset.load(folders["prepared_dataset"])
    queries = test_queries(prepared).set_index("query_id").loc[saved["query_id"]].reset_index()
    retriever = load_retriever(folders["sft_checkpoint"], folders["semantic_ids"], folders["prepared_dataset"],
                               bucket_pool=bucket_pool(args, params))
    metrics = test_metrics(prepared, queries, retriever.resolve(queries["text"].astype(str).tolist(), saved["sids"],
                                                                saved["scores"], EVAL_K))
    emit(BENCH, "gr_sarq_acrq_gpu_preset", **{key: metrics[key] for key in
                                               ("recall@10", "ndcg@10", "recall@10_cold", "recall@10_seen",
                                                "n_queries") if key in metrics})


def evaluate_model(args: argparse.Namespace) -> None:
    """Test quality of a model trained elsewhere (e.g. `python -m sid_models.generative.train` on a GPU
    machine) on this machine's benchmark chain, the chain picked by --overrides (same JSON as the
    other benchmarks). The checkpoint folder gets the chain's retriever assets (sci/)."""
    from common import HOME_DEPOT, benchmark_params, bucket_pool, run_chain

    from sid_models.generative.retriever import load_retriever, write_retriever_assets

    params = benchmark_params(argparse.Namespace(data=str(HOME_DEPOT), overrides=args.overrides))
    folders = run_chain(params, False, ("semantic_ids",), BENCH, build=False)
    checkpoint = Path(args.checkpoint)
    write_retriever_assets(checkpoint, folders["sci_towers"], params)
    prepared = PreparedDataset.load(folders["prepared_dataset"])
    retriever = load_retriever(checkpoint, folders["semantic_ids"], folders["prepared_dataset"],
                               variant=args.variant, bucket_pool=bucket_pool(args, params))
    emit(BENCH, args.name, variant=args.variant, overrides=json.loads(args.overrides),
         **quality(retriever, prepared, test_queries(prepared)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="on the GPU machine")
    run.add_argument("--prepared", required=True, help="prepared_dataset folder")
    run.add_argument("--sids", required=True, help="semantic_ids folder")
    run.add_argument("--out", required=True)
    run.add_argument("--train-seconds", type=float, required=True, help="SFT budget after the probe")
    run.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    run.add_argument("--preset", default="gpu", help="generative.presets entry (a small one for a CPU smoke run)")
    run.add_argument("--speed-batches", type=int, default=8, help="batches of 64 timed per decoder")
    run.add_argument("--mlflow-uri", default=None, help="track the run (and its GPU system metrics) here")
    back = commands.add_parser("resolve", help="on the CPU machine that built the benchmark chain")
    back.add_argument("--npz", required=True, help="test_sids.npz written by `train`")
    model = commands.add_parser("evaluate", help="on the CPU machine: a model trained elsewhere, on this chain")
    model.add_argument("--checkpoint", required=True, help="folder with model.pt, config.json, vocab.json")
    model.add_argument("--variant", default=None, help="SID variant (default: the semantic_ids folder's shipped one)")
    model.add_argument("--name", required=True, help="system name in the JSON line")
    model.add_argument("--overrides", default="{}", help="JSON over params.yaml that picks the chain")
    args = parser.parse_args()
    if args.command == "resolve":
        resolve(args)
    elif args.command == "evaluate":
        evaluate_model(args)
    elif args.mlflow_uri:
        train_tracked(args)
    else:
        train(args, *probe(args))


if __name__ == "__main__":
    sys.exit(main())
