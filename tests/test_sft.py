"""SFT trainer: learning, exact resume, schedule, and the distributed (DDP) path."""
from __future__ import annotations

import json

import pytest
import torch

from sid_models.generative.train import train_sft
from sid_models.shared.training import DistContext, lr_factor
from sid_models.params import deep_merge
from ddp_check import assert_ddp_matches_single_process
from test_generative_data import write_synthetic_sids

TINY_MODEL = {"d_model": 32, "n_heads": 2, "n_enc_layers": 1, "n_dec_layers": 1, "d_ff": 64,
              "dropout": 0.1, "max_enc_len": 16}


def tiny_params(small_params: dict, **sft) -> dict:
    return deep_merge(small_params, {
        "generative": {"preset": "cpu", "device": "cpu", "init_from_minilm": False, "query_vector": False,
                       "presets": {"cpu": {"model": TINY_MODEL, "sft": {"steps": 6, "batch_size": 16}}}},
        # no queries lent: lending by the towers needs their item views, which these runs do not build;
        # no query vector, so no SCI teacher
        "sft": {"warmup_steps": 2, "checkpoint_every": 2, "log_every": 1, "borrowed_queries": {"per_item": 0},
                "sci_distillation": {"weight": 0.0}, **sft},
    })


def command_line_overrides(small_params: dict, model: dict, steps: int, checkpoint_every: int) -> dict:
    """--overrides of `python -m sid_models.generative.train` for a tiny single-thread run on the small demo store."""
    return {"generative": {"preset": "cpu", "device": "cpu", "init_from_minilm": False, "threads": 1,
                           "query_vector": False,
                           "presets": {"cpu": {"model": model, "sft": {"steps": steps, "batch_size": 16}}}},
            "sft": {"warmup_steps": 2, "checkpoint_every": checkpoint_every, "log_every": 1,
                    "borrowed_queries": {"per_item": 0}, "sci_distillation": {"weight": 0.0}},
            "demo": small_params["demo"]}


@pytest.fixture(scope="module")
def sids_folder(small_prepared, tmp_path_factory):
    return write_synthetic_sids(small_prepared, tmp_path_factory.mktemp("sids"))


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    factors = [lr_factor(step, 4, 20, 0.1) for step in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert factors[20] == pytest.approx(0.1)


def test_loss_falls_when_training_on_the_demo_store(small_params, small_prepared, sids_folder, tmp_path):
    params = tiny_params(small_params, lr=0.005)
    params = deep_merge(params, {"generative": {"presets": {"cpu": {"sft": {"steps": 40, "batch_size": 32}}}},
                                 "sft": {"warmup_steps": 5, "checkpoint_every": 40}})
    _, history = train_sft(params, small_prepared, sids_folder, tmp_path, dist=DistContext(), progress=False)
    first = sum(record["loss"] for record in history[:5]) / 5
    last = sum(record["loss"] for record in history[-5:]) / 5
    assert last < 0.7 * first
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "train_state.pt").is_file()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 40


def test_stop_and_resume_gives_the_parameters_of_an_uninterrupted_run(small_params, small_prepared, sids_folder,
                                                                      tmp_path):
    params = tiny_params(small_params)
    straight, _ = train_sft(params, small_prepared, sids_folder, tmp_path / "straight", dist=DistContext(),
                            progress=False)
    train_sft(params, small_prepared, sids_folder, tmp_path / "resumed", dist=DistContext(), progress=False,
              stop_at=3)
    resumed, history = train_sft(params, small_prepared, sids_folder, tmp_path / "resumed", dist=DistContext(),
                                 progress=False)
    assert [record["step"] for record in history] == [4, 5, 6]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_query_vector_model_trains_and_decodes_with_the_towers_vectors(small_params, small_prepared, sids_folder,
                                                                        tmp_path):
    import numpy as np

    from sid_models.generative.data import read_sid_table, vocab_for
    from sid_models.generative.retriever import SidDecoder
    from sid_models.generative.trie import SidTrie
    from sid_models.generative.inputs import EncoderReader

    towers = tmp_path / "towers"
    towers.mkdir()
    rng = np.random.default_rng(0)
    np.save(towers / "queries.npy", rng.normal(size=(len(small_prepared.queries), 8)).astype(np.float32))
    np.save(towers / "item_query_view.npy", rng.normal(size=(len(small_prepared.items), 8)).astype(np.float32))
    # stand-in vectors, no towers to encode the views with: views read their item's vector
    params = deep_merge(tiny_params(small_params, lr=0.005, indexing_query_vector="title"),
                        {"generative": {"query_vector": True}})
    with pytest.raises(ValueError, match="needs the sci_towers folder"):
        train_sft(params, small_prepared, sids_folder, tmp_path / "none", dist=DistContext(), progress=False)
    model, history = train_sft(params, small_prepared, sids_folder, tmp_path / "model", dist=DistContext(),
                               progress=False, towers_folder=towers)
    assert model.config.query_vector_dim == 8 and len(history) == 6
    vocab = vocab_for(sids_folder, "sarq_acrq")
    trie = SidTrie.build([tuple(int(c) for c in sid) for sid in read_sid_table(sids_folder, "sarq_acrq")["sid"]], vocab)
    decoder = SidDecoder(model, EncoderReader.for_model(model.config, params["text"]), trie, beam_size=3, length_penalty=0.0, batch_size=2,
                         encode_queries=lambda texts: np.ones((len(texts), 8), dtype=np.float32))
    sids, _ = decoder.search_sids(["brass lamp", "steel hammer", "rug"], 3)
    assert sids.shape == (3, 3) and (sids >= 0).all()
    given, _ = decoder.search_sids(["brass lamp", "steel hammer", "rug"], 3, np.ones((3, 8), dtype=np.float32))
    assert np.array_equal(sids, given)


def test_sci_distillation_adds_the_teachers_term_and_is_part_of_what_a_resume_checks(small_params, small_prepared,
                                                                                     sids_folder, tmp_path):
    import numpy as np

    towers = tmp_path / "towers"
    towers.mkdir()
    rng = np.random.default_rng(0)
    for name, rows in (("queries.npy", len(small_prepared.queries)), ("item_query_view.npy", len(small_prepared.items)),
                       ("item_item_view.npy", len(small_prepared.items))):
        vectors = rng.normal(size=(rows, 8)).astype(np.float32)
        np.save(towers / name, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    distilled = {"sci_distillation": {"weight": 1.0, "temperature": 0.1, "levels": 2}}
    params = deep_merge(tiny_params(small_params, lr=0.005, indexing_query_vector="title", **distilled),
                        {"generative": {"query_vector": True}})
    with pytest.raises(ValueError, match="needs generative.query_vector"):
        train_sft(deep_merge(params, {"generative": {"query_vector": False}}), small_prepared, sids_folder,
                  tmp_path / "no_vectors", dist=DistContext(), progress=False, towers_folder=towers)
    _, history = train_sft(params, small_prepared, sids_folder, tmp_path / "model", dist=DistContext(), progress=False,
                           towers_folder=towers, stop_at=3)
    assert all(record["distillation"] > 0 for record in history)
    plain = deep_merge(params, {"sft": {"sci_distillation": {"weight": 0.0}}})
    _, plain_history = train_sft(plain, small_prepared, sids_folder, tmp_path / "plain", dist=DistContext(),
                                 progress=False, towers_folder=towers, stop_at=3)
    assert "distillation" not in plain_history[0]
    assert history[0]["loss"] > plain_history[0]["loss"]      # the same first batch, plus λ L_T
    with pytest.raises(ValueError, match="trained from other params or inputs"):
        train_sft(plain, small_prepared, sids_folder, tmp_path / "model", dist=DistContext(), progress=False,
                  towers_folder=towers)


def test_resuming_a_folder_trained_with_other_params_is_refused(small_params, small_prepared, sids_folder, tmp_path):
    train_sft(tiny_params(small_params), small_prepared, sids_folder, tmp_path, dist=DistContext(), progress=False)
    with pytest.raises(ValueError, match="trained from other params or inputs"):
        train_sft(tiny_params(small_params, lr=0.01), small_prepared, sids_folder, tmp_path, dist=DistContext(),
                  progress=False)


def test_metrics_reach_disk_at_each_log_step_and_a_resume_keeps_one_line_per_step(small_params, small_prepared,
                                                                                  sids_folder, tmp_path):
    params = tiny_params(small_params, checkpoint_every=3)
    train_sft(params, small_prepared, sids_folder, tmp_path, dist=DistContext(), progress=False, stop_at=4)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]      # step 4 is past the checkpoint
    train_sft(params, small_prepared, sids_folder, tmp_path, dist=DistContext(), progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.timeout(300)
def test_sigkill_during_training_then_resume_equals_an_uninterrupted_run(small_params, small_prepared, sids_folder,
                                                                         tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from sid_models.params import REPO_ROOT

    prepared = small_prepared.save(tmp_path / "prepared")
    overrides = command_line_overrides(small_params, TINY_MODEL, steps=60, checkpoint_every=5)
    command = [sys.executable, "-m", "sid_models.generative.train", "--prepared", str(prepared),
               "--sids", str(sids_folder), "--overrides", json.dumps(overrides)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "--out", str(tmp_path / "straight")], check=True, cwd=REPO_ROOT, env=env, timeout=200)

    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(killed)], cwd=REPO_ROOT, env=env)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        metrics = killed / "metrics.jsonl"
        if (killed / "train_state.pt").is_file() and metrics.is_file() and len(metrics.read_text().splitlines()) >= 22:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    logged = len((killed / "metrics.jsonl").read_text().splitlines())
    assert 22 <= logged < 60 and not (killed / "model.pt").exists()
    subprocess.run([*command, "--out", str(killed)], check=True, cwd=REPO_ROOT, env=env, timeout=200)

    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    resumed = torch.load(killed / "model.pt", weights_only=True)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_ddp_ranks_agree_and_match_a_single_process_run(small_params, small_prepared, sids_folder,
                                                                 tmp_path):
    prepared = small_prepared.save(tmp_path / "prepared")
    overrides = command_line_overrides(small_params, {**TINY_MODEL, "dropout": 0.0}, steps=4, checkpoint_every=4)
    command = ["-m", "sid_models.generative.train", "--prepared", str(prepared), "--sids", str(sids_folder),
               "--overrides", json.dumps(overrides), "--save-every-rank"]
    assert_ddp_matches_single_process(command, tmp_path, timeout=170, steps=4)
