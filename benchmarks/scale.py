"""Scale: SIDs, trie compile, IVF and IVF-PQ index builds and constrained decoding, for catalogues of 55k to 10M items.

Per catalogue size N (`--sizes`, default 54,667 — Home Depot's — and 1,000,000; add 10000000
for the 10M run) a synthetic catalogue of N clustered unit vectors (256-d, 4,096 clusters,
Pareto exposure as real catalogues have) is written chunk by chunk into a .npy file: it is
never whole in memory, and every phase reads it by chunks (explicit reads, not a memory map,
so the file's pages do not count as the reader's memory). Each phase runs in a fresh process,
so its peak resident memory (`peak_mib`, VmHWM) is its own:

- `sids`: ACRQ's stage A at scale — residual k-means codebooks (4 levels x 256 codes, faiss
  k-means) fitted on the head items of a sample of at most `--train-sample` rows, weighted by
  exposure, then frozen; every item is encoded against them chunk by chunk;
  then SARQ's variable lengths. ACRQ's stage B (the learned tail adapter) is not trained here.
- `trie`: `SidTrie.build` over the distinct SIDs (`seconds`, `n_sids`), then `decode`: a
  randomly initialised generative model of the `cpu` preset decodes `--decode-queries` queries
  under that trie (beam `decode.beam_size`, batch `decode.batch_size`): `queries_per_s`.
  Throughput depends on the trie, not on the weights.
- `exact`: the exact top 10 of 1,000 sampled catalogue vectors used as queries, by a chunked
  flat scan: the reference for the indexes' recall.
- `ivf`, `ivf_pq`: faiss IVF-Flat and IVF-PQ (32 sub-quantisers x 8 bits) over 4·√N lists
  (a power of two, at most `--max-lists`), trained on 64 sampled rows per list, filled chunk
  by chunk; `search_qps` and `recall@10` against `exact` at nprobe 8.

Output: one JSON line per (size, phase), then `ratio` lines: each size against the smallest
on decode throughput and build seconds.

  .venv/bin/python benchmarks/scale.py                       # 55k and 1M
  .venv/bin/python benchmarks/scale.py --sizes 54667 1000000 10000000
  .venv/bin/python benchmarks/scale.py --quick               # 20k and 100k
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import queue
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log  # noqa: E402  (sets sys.path)

from sid_models.params import load_params  # noqa: E402

BENCH = "scale"
DIM, CLUSTERS, LEVELS, CODES = 256, 4096, 4, 256
CHUNK_ROWS = 262_144
PQ_SUBQUANTIZERS, PQ_BITS, NPROBE, SEARCH_QUERIES, RECALL_K = 32, 8, 8, 1000, 10
POINTS_PER_LIST = 64          # index training rows per inverted list (faiss warns under 39)
QUICK_SIZES = (20_000, 100_000)


def peak_mib() -> float:
    """This process's resident high-water mark (VmHWM).

    Not getrusage's ru_maxrss: Linux carries that across execve, so a phase would report the
    parent's peak. VmHWM belongs to the address space, which exec replaces.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("/proc/self/status has no VmHWM line: peak memory cannot be measured here")


def chunks(n: int):
    for start in range(0, n, CHUNK_ROWS):
        yield start, min(start + CHUNK_ROWS, n)


class VectorFile:
    """The catalogue's vectors.npy, read by explicit file reads rather than a memory map.

    Pages of a memory map count in the reader's resident set until the kernel drops them, so
    peak memory would grow with the file; read() copies a chunk and keeps only that.
    """

    def __init__(self, path: Path):
        header = np.load(path, mmap_mode="r")        # reads the header only
        if header.dtype != np.float32 or header.ndim != 2 or header.shape[1] != DIM:
            raise ValueError(f"{path}: expected float32 vectors of shape (n, {DIM}), found {header.dtype} {header.shape}")
        self.path, self.rows, self.offset = path, header.shape[0], header.offset

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.fromfile(self.path, dtype=np.float32, count=(stop - start) * DIM,
                           offset=self.offset + start * DIM * 4).reshape(stop - start, DIM)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given sorted rows, gathered chunk by chunk."""
        parts = []
        for start, stop in chunks(self.rows):
            low, high = np.searchsorted(rows, [start, stop])
            if high > low:
                parts.append(self.read(start, stop)[rows[low:high] - start])
        return np.concatenate(parts)


def write_catalogue(folder: Path, n: int, seed: int) -> None:
    """vectors.npy (written by chunks, never whole in memory) and exposure.npy of a synthetic catalogue."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    path = folder / "vectors.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM)).flush()   # header, sparse body
    offset = VectorFile(path).offset
    with path.open("r+b") as file:
        file.seek(offset)
        for start, stop in chunks(n):
            members = centres[rng.integers(CLUSTERS, size=stop - start)]
            block = members + 0.6 * rng.standard_normal(members.shape, dtype=np.float32)
            file.write((block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float32).tobytes())
    np.save(folder / "exposure.npy", np.floor(rng.pareto(1.2, size=n)))


def training_sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed + 1).choice(n, size=min(n, size), replace=False))


def phase_sids(folder: Path, params: dict, sample_size: int) -> dict:
    from sid_models.quantize.rkmeans import ResidualKMeans, ResidualKMeansConfig
    from sid_models.quantize.sarq import Sarq, SarqConfig

    catalogue = VectorFile(folder / "vectors.npy")
    exposure = np.load(folder / "exposure.npy")
    head = exposure >= params["segments"]["head_min_exposure"]
    started = time.perf_counter()
    rows = training_sample(catalogue.rows, sample_size, params["seed"])
    anchors = rows[head[rows]]
    config = ResidualKMeansConfig.from_params({**params["quantize"], "levels": LEVELS, "codes_per_level": CODES},
                                              params["seed"])
    quantizer = ResidualKMeans(config)
    quantizer.fit(catalogue.take(anchors), weights=exposure[anchors])
    fitted = time.perf_counter()
    codes = np.concatenate([quantizer.encode(catalogue.read(start, stop)) for start, stop in chunks(catalogue.rows)])
    encoded = time.perf_counter()
    sids = Sarq(SarqConfig.from_params(params["sarq"]), params["semantic_ids"]["disambiguation_base"]).assign(codes, quantizer.codes_per_level, exposure, head)
    done = time.perf_counter()
    np.save(folder / "sid_tokens.npy", sids.tokens)
    _, counts = sids.groups()
    return {"seconds": round(done - started, 2), "fit_seconds": round(fitted - started, 2),
            "encode_seconds": round(encoded - fitted, 2), "sarq_seconds": round(done - encoded, 2),
            "anchor_items": int(len(anchors)), "mean_length": round(float(sids.lengths.mean()), 3),
            "n_sids": int(len(counts)), "max_bucket": int(counts.max()), "peak_mib": peak_mib()}


def phase_trie(folder: Path, params: dict, n_queries: int) -> dict:
    import torch

    from sid_models.generative.model import Seq2SeqRetriever
    from sid_models.generative.train import model_config
    from sid_models.generative.trie import SidTrie, constrained_beam_search
    from sid_models.generative.vocab import SidVocab

    torch.set_num_threads(int(params["generative"]["threads"]))
    distinct = np.unique(np.load(folder / "sid_tokens.npy"), axis=0)      # ABSENT (-1) pads each SID
    sid_lengths = (distinct >= 0).sum(1)
    sids = [tuple(row[:length].tolist()) for row, length in zip(distinct, sid_lengths)]
    vocab = SidVocab.for_sids(sids)
    started = time.perf_counter()
    trie = SidTrie.build(sids, vocab)
    built = time.perf_counter() - started
    trie_peak = peak_mib()
    generative = {**params["generative"], "preset": "cpu"}
    config = model_config({**params, "generative": generative}, vocab.size, trie.max_length + 2)
    torch.manual_seed(params["seed"])
    model = Seq2SeqRetriever(config).eval()
    rng = np.random.default_rng(params["seed"])
    input_ids = torch.as_tensor(rng.integers(1000, config.enc_vocab_size, size=(n_queries, 8)), dtype=torch.long)
    mask = torch.ones_like(input_ids)
    decode, batch = params["decode"], int(params["decode"]["batch_size"])
    with torch.no_grad():
        constrained_beam_search(model, input_ids[:batch], mask[:batch], trie, int(decode["beam_size"]),
                                float(decode["length_penalty"]))                    # warm-up
        started = time.perf_counter()
        for start in range(0, n_queries, batch):
            constrained_beam_search(model, input_ids[start:start + batch], mask[start:start + batch], trie,
                                    int(decode["beam_size"]), float(decode["length_penalty"]))
        decoded = time.perf_counter() - started
    return {"seconds": round(built, 2), "n_sids": len(sids), "trie_peak_mib": trie_peak,
            "decode_queries": n_queries, "beam": int(decode["beam_size"]),
            "queries_per_s": round(n_queries / decoded, 1), "peak_mib": peak_mib()}


def search_queries(n: int, seed: int) -> np.ndarray:
    return training_sample(n, SEARCH_QUERIES, seed + 7)


def phase_exact(folder: Path, params: dict) -> dict:
    """Exact top-10 by inner product of the search queries, scanned chunk by chunk: the recall reference."""
    import faiss

    faiss.omp_set_num_threads(2)
    catalogue = VectorFile(folder / "vectors.npy")
    queries = catalogue.take(search_queries(catalogue.rows, params["seed"]))
    started = time.perf_counter()
    best_scores = np.full((len(queries), RECALL_K), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), RECALL_K), -1, dtype=np.int64)
    for start, stop in chunks(catalogue.rows):
        flat = faiss.IndexFlatIP(DIM)
        flat.add(catalogue.read(start, stop))
        scores, rows = flat.search(queries, RECALL_K)
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_rows = np.concatenate([best_rows, rows + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :RECALL_K]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best_rows = np.take_along_axis(merged_rows, keep, axis=1)
    np.save(folder / "exact_top.npy", best_rows)
    return {"seconds": round(time.perf_counter() - started, 2), "queries": len(queries), "k": RECALL_K,
            "peak_mib": peak_mib()}


def index_lists(n: int, max_lists: int) -> int:
    """4·√N inverted lists (a power of two), at most max_lists.

    Adding N vectors costs N × lists × dim flops for the coarse assignment, and training costs
    POINTS_PER_LIST × lists² × dim per k-means iteration, so on two cores the list count is what
    bounds the 10M build; past the cap the lists grow longer instead (more codes scanned per probe).
    """
    return min(2 ** round(math.log2(4 * math.sqrt(n))), max_lists)


def phase_index(folder: Path, params: dict, kind: str, max_lists: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(2)
    catalogue = VectorFile(folder / "vectors.npy")
    n = catalogue.rows
    nlist = index_lists(n, max_lists)
    coarse = faiss.IndexFlatIP(DIM)
    index = (faiss.IndexIVFFlat(coarse, DIM, nlist, faiss.METRIC_INNER_PRODUCT) if kind == "ivf" else
             faiss.IndexIVFPQ(coarse, DIM, nlist, PQ_SUBQUANTIZERS, PQ_BITS, faiss.METRIC_INNER_PRODUCT))
    started = time.perf_counter()
    index.train(catalogue.take(training_sample(n, POINTS_PER_LIST * nlist, params["seed"])))
    trained = time.perf_counter()
    for start, stop in chunks(n):
        index.add(catalogue.read(start, stop))
    added = time.perf_counter()
    index.nprobe = NPROBE
    queries = catalogue.take(search_queries(n, params["seed"]))
    searched = time.perf_counter()
    _, found = index.search(queries, RECALL_K)
    search_seconds = time.perf_counter() - searched
    figures = {"seconds": round(added - started, 2), "train_seconds": round(trained - started, 2),
               "add_seconds": round(added - trained, 2), "nlist": nlist, "nprobe": NPROBE,
               "search_qps": round(len(queries) / search_seconds, 1)}
    exact_path = folder / "exact_top.npy"
    if exact_path.exists():
        exact = np.load(exact_path)
        overlap = [len(set(row) & set(truth)) for row, truth in zip(found.tolist(), exact.tolist())]
        figures[f"recall@{RECALL_K}"] = round(float(np.mean(overlap)) / RECALL_K, 4)
    return {**figures, "peak_mib": peak_mib()}


PHASES = {
    "sids": lambda folder, params, args: phase_sids(folder, params, args.train_sample),
    "trie": lambda folder, params, args: phase_trie(folder, params, args.decode_queries),
    "exact": lambda folder, params, args: phase_exact(folder, params),
    "ivf": lambda folder, params, args: phase_index(folder, params, "ivf", args.max_lists),
    "ivf_pq": lambda folder, params, args: phase_index(folder, params, "ivf_pq", args.max_lists),
}


def _child(phase: str, folder: str, params: dict, args: argparse.Namespace, results) -> None:
    results.put(PHASES[phase](Path(folder), params, args))


def in_fresh_process(phase: str, folder: Path, params: dict, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child, args=(phase, str(folder), params, args, results))
    process.start()
    while True:                  # a child that dies before it answers must not leave us waiting
        try:
            result = results.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(f"phase {phase} died with exit code {process.exitcode} before it reported "
                                   "(its traceback is above)") from None
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"phase {phase} exited with code {process.exitcode}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[54_667, 1_000_000])
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    parser.add_argument("--train-sample", type=int, default=500_000, help="rows the quantiser's sample holds")
    parser.add_argument("--decode-queries", type=int, default=256)
    parser.add_argument("--max-lists", type=int, default=4096, help="cap on the IVF list count (see index_lists)")
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    parser.add_argument("--work", default=None, help="folder for the catalogue files (default: a temporary one)")
    args = parser.parse_args()
    params = load_params()
    sizes = sorted(QUICK_SIZES if args.quick else args.sizes)
    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_scale_", dir=args.work) as tmp:
        for n in sizes:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            started = time.perf_counter()
            write_catalogue(folder, n, params["seed"])
            log(f"[{BENCH}] {n:,} items: catalogue written in {time.perf_counter() - started:.0f} s")
            results[n] = {}
            for phase in args.phases:
                results[n][phase] = in_fresh_process(phase, folder, params, args)
                emit(BENCH, phase, n_items=n, **results[n][phase])
            for path in folder.iterdir():
                path.unlink()
    base = sizes[0]
    for n in sizes[1:]:
        ratios = {"n_items": n, "against": base}
        for phase, figures in results[n].items():
            ratios[f"{phase}_seconds_ratio"] = round(figures["seconds"] / max(results[base][phase]["seconds"], 1e-9), 2)
        if "trie" in results[n]:
            ratios["decode_slowdown"] = round(results[base]["trie"]["queries_per_s"]
                                              / results[n]["trie"]["queries_per_s"], 2)
        emit(BENCH, "ratio", **ratios)


if __name__ == "__main__":
    sys.exit(main())
