"""Library logging: into the caller's active MLflow run, and without MLflow when there is none."""
import subprocess
import sys

from sid_models import tracking


def test_library_code_never_imports_mlflow_when_the_caller_did_not():
    # A slim GPU or serving image may lack MLflow: training and decoding must not need it.
    script = ("import sys\n"
              "from sid_models import tracking\n"
              "import sid_models.generative.train, sid_models.generative.retriever, sid_models.align.trainer\n"
              "tracking.log_params({'a': 1}); tracking.log_metrics({'recall@10': 0.5}, step=1)\n"
              "assert not tracking.active()\n"
              "assert 'mlflow' not in sys.modules, 'library import pulled in mlflow'\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_logs_into_the_active_run(tmp_path):
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        # an explicit experiment: the fluent API's active experiment may be another store's
        with mlflow.start_run(experiment_id=mlflow.create_experiment("tracking")) as run:
            assert tracking.active()
            tracking.log_params({"sft": {"lr": 0.002}})
            tracking.log_metrics({"recall@10": 0.25}, step=3)
        logged = mlflow.get_run(run.info.run_id).data
        assert logged.params == {"sft.lr": "0.002"}
        assert logged.metrics == {"recall_at_10": 0.25}
        assert not tracking.active()
    finally:
        mlflow.set_tracking_uri(previous)
