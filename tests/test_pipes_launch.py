"""The SFT and alignment assets' training launched under torchrun (2 gloo ranks) through
Dagster Pipes.

A real Dagster materialisation runs `materialize_stage`, the code every stage asset runs, with
params `launcher.kind: torchrun`; PipesSubprocessClient starts torchrun, both ranks train with
DDP, rank 0 writes the checkpoint and reports back: its log lines, each training log step and
the stage's metadata. The alignment asset aligns the SFT checkpoint the first asset wrote.
"""

import shutil
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import yaml

from orchestration.launch import launched, torchrun_command
from orchestration.resources import MlflowTracking, ParamsResource
from orchestration.stage_asset import ARTIFACT_ROOT, materialize_stage
from sid_models.params import deep_merge
from test_generative_stage import stage_inputs  # noqa: F401  (fixture)
from test_sft import TINY_MODEL

STEPS, LOG_EVERY, ALIGN_LOG_EVERY = 12, 3, 2


@pytest.fixture(scope="module")
def launched_run(small_params, stage_inputs, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("pipes")
    params = deep_merge(small_params, {
        "generative": {"preset": "cpu", "device": "cpu", "init_from_minilm": False,
                       "presets": {"cpu": {"model": {**TINY_MODEL, "dropout": 0.0},
                                           "sft": {"steps": STEPS, "batch_size": 16}}}},
        "sft": {"warmup_steps": 2, "checkpoint_every": STEPS, "log_every": LOG_EVERY, "valid_max_queries": 16,
                "baselines": {"tiger": None}},
        "decode": {"beam_size": 4, "batch_size": 16},
        "align": {"train": {"epochs": 1, "batch_size": 16, "warmup_steps": 2, "log_every": ALIGN_LOG_EVERY},
                  "rdrw": {"warmup_pairs": 64}, "mining": {"beam_size": 4}, "train_vanilla_baseline": False},
        "launcher": {"kind": "torchrun", "nproc_per_node": 2, "threads_per_rank": 1,
                     "stages": ["sft_checkpoint", "dpo_checkpoint"]},
        "eval": {"reports_dir": str(tmp / "reports")},
    })
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"

    @dg.asset(name="sft_checkpoint")
    def launched_sft(context: dg.AssetExecutionContext, params: ParamsResource,
                     mlflow_tracking: MlflowTracking) -> dg.Output[str]:
        return materialize_stage(context, "sft_checkpoint", stage_inputs, params, mlflow_tracking)

    @dg.asset(name="dpo_checkpoint")
    def launched_dpo(context: dg.AssetExecutionContext, params: ParamsResource, mlflow_tracking: MlflowTracking,
                     sft_checkpoint: str) -> dg.Output[str]:
        return materialize_stage(context, "dpo_checkpoint", {**stage_inputs, "sft_checkpoint": Path(sft_checkpoint)},
                                 params, mlflow_tracking)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([launched_sft, launched_dpo], instance=instance, resources={
        "params": ParamsResource(path=str(params_file)),
        "mlflow_tracking": MlflowTracking(tracking_uri=tracking_uri, artifact_root=str(tmp / "artifacts"))})
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    yield result, logs, tracking_uri
    for stage in ("sft_checkpoint", "dpo_checkpoint"):
        shutil.rmtree(ARTIFACT_ROOT / stage / result.run_id, ignore_errors=True)


def test_only_the_named_stages_launch_and_bad_settings_are_refused(small_params):
    params = deep_merge(small_params, {"launcher": {"kind": "torchrun", "stages": ["sft_checkpoint"]}})
    assert launched("sft_checkpoint", params) and not launched("dpo_checkpoint", params)
    assert not launched("sft_checkpoint", small_params)
    with pytest.raises(ValueError, match="launcher.kind"):
        launched("sft_checkpoint", deep_merge(small_params, {"launcher": {"kind": "slurm"}}))
    with pytest.raises(ValueError, match="nproc_per_node"):
        torchrun_command("sft_checkpoint", Path("p.yaml"), {}, Path("out"), 0)


@pytest.mark.timeout(400)
def test_sft_under_torchrun_reports_logs_steps_and_metadata_back_to_dagster(launched_run):
    result, logs, tracking_uri = launched_run
    assert result.success
    folder = Path(result.output_for_node("sft_checkpoint"))
    assert folder == ARTIFACT_ROOT / "sft_checkpoint" / result.run_id
    for name in ("model.pt", "config.json", "validation.json", "metrics.jsonl"):
        assert (folder / name).is_file(), name
    assert not folder.with_name(folder.name + ".partial").exists()
    metadata = result.asset_materializations_for_node("sft_checkpoint")[0].metadata
    # what rank 0 computed and reported through Pipes is the asset's metadata
    assert metadata["launcher"].value == "torchrun" and metadata["launcher_ranks"].value == 2
    assert metadata["sarq_acrq_valid_sid_rate"].value == 1.0
    assert metadata["sarq_acrq_steps"].value == STEPS
    assert metadata["launcher_steps_reported"].value == STEPS // LOG_EVERY
    assert any("rank 0 of 2" in message for message in logs), logs[-20:]
    # the per-step metrics reached the stage's MLflow run, one point per log step
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(metadata["mlflow_run_id"].value)
    loss_keys = [key for key in run.data.metrics if key.endswith("/loss")]
    assert loss_keys, sorted(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, loss_keys[0])
    assert sorted(point.step for point in history) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))


@pytest.mark.timeout(400)
def test_alignment_under_torchrun_aligns_the_launched_sft_model_and_reports_back(launched_run):
    result, logs, tracking_uri = launched_run
    assert result.success
    folder = Path(result.output_for_node("dpo_checkpoint"))
    for name in ("model.pt", "validation.json", "preferences.parquet", "metrics.jsonl"):
        assert (folder / name).is_file(), name
    metadata = result.asset_materializations_for_node("dpo_checkpoint")[0].metadata
    assert metadata["launcher"].value == "torchrun" and metadata["launcher_ranks"].value == 2
    steps = metadata["rad_dpo_steps"].value
    assert steps > 0 and metadata["rad_dpo_valid_valid_sid_rate"].value == 1.0
    assert metadata["launcher_steps_reported"].value == len(range(ALIGN_LOG_EVERY, steps + 1, ALIGN_LOG_EVERY)) + (
        steps % ALIGN_LOG_EVERY != 0)
    run = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(metadata["mlflow_run_id"].value)
    assert any(key.endswith("/loss") for key in run.data.metrics), sorted(run.data.metrics)
