"""The packaged retriever: pyfunc contract, request validation, the real scoring server, the CLI.

The packaging is exercised with the MiniLM dense system (a real searcher built from real
artifact folders); the generative retriever goes through the same SearcherModel in the
end-to-end test.
"""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException

from sid_models.serving import cli
from sid_models.serving.pyfunc import ServingLimits, log_searcher_model, parse_request
from sid_models.serving.server import post_json, scoring_server

MODEL_NAME = "sid-retrieval-test"
LIMITS = ServingLimits(default_k=5, max_k=20, max_query_chars=64, max_batch=8)


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_params, small_prepared, small_stage_folders):
    """A MiniLM searcher logged as a pyfunc, registered, aliased champion, in a temporary MLflow store."""
    root = tmp_path_factory.mktemp("serving")
    params = {**small_params, "registry": {**small_params["registry"], "model_name": MODEL_NAME},
              "serving": {**small_params["serving"], **{key: getattr(LIMITS, key) for key in
                                                         ("default_k", "max_k", "max_query_chars", "max_batch")}}}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serving-test", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = log_searcher_model("sid_models.eval.systems:load_minilm",
                                  small_stage_folders,
                                  {"prepared_folder": "prepared_dataset", "embeddings_folder": "text_embeddings"},
                                  LIMITS, ["cordless drill"], loader_kwargs={"text_params": params["text"]},
                                  registered_model_name=MODEL_NAME)
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", info.registered_model_version)
    yield {"uri": uri, "root": root, "params_file": params_file, "info": info,
           "items": set(small_prepared.items["item_id"]), "model": mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")}
    mlflow.set_tracking_uri(previous)


def test_model_returns_ranked_items_with_scores(served):
    found = served["model"].predict(pd.DataFrame({"query": ["steel hammer", "brass lamp"]}), params={"k": 3})
    assert list(found.columns) == ["query", "item_ids", "scores"]
    assert found["query"].tolist() == ["steel hammer", "brass lamp"]
    for ids, scores in zip(found["item_ids"], found["scores"]):
        assert len(ids) == 3 and set(ids) <= served["items"]
        assert list(scores) == sorted(scores, reverse=True)


def test_default_k_comes_from_the_serving_limits(served):
    found = served["model"].predict(pd.DataFrame({"query": ["steel hammer"]}))
    assert len(found["item_ids"][0]) == LIMITS.default_k


def test_logged_model_has_signature_and_input_example(served):
    info = served["info"]
    assert [spec.name for spec in info.signature.inputs.inputs] == ["query"]
    assert [spec.name for spec in info.signature.params.params] == ["k"]
    assert {spec.name for spec in info.signature.outputs.inputs} == {"query", "item_ids", "scores"}
    assert info.saved_input_example_info is not None


@pytest.mark.parametrize("frame, k, message", [
    (pd.DataFrame({"query": [""]}), None, "query at row 0 is empty"),
    (pd.DataFrame({"query": ["drill", "   "]}), None, "query at row 1 is empty"),
    (pd.DataFrame({"query": ["drill"]}), 0, "k is 0"),
    (pd.DataFrame({"query": ["drill"]}), LIMITS.max_k + 1, f"k is {LIMITS.max_k + 1}"),
    (pd.DataFrame({"query": ["x" * (LIMITS.max_query_chars + 1)]}), None, "at most 64 allowed"),
    (pd.DataFrame({"query": ["drill"] * (LIMITS.max_batch + 1)}), None, "at most 8 allowed"),
    (pd.DataFrame({"query": []}, dtype=str), None, "no queries"),
])
def test_model_rejects_bad_requests_with_a_clear_message(served, frame, k, message):
    with pytest.raises(MlflowException, match=message) as raised:
        served["model"].predict(frame, params=None if k is None else {"k": k})
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_parse_request_accepts_a_list_of_strings_and_rejects_other_shapes():
    assert parse_request(["drill", "lamp"], 3, LIMITS) == (["drill", "lamp"], 3)
    with pytest.raises(MlflowException, match="must be a string"):
        parse_request(["drill", 7], None, LIMITS)
    with pytest.raises(MlflowException, match="exactly one column 'query'"):
        parse_request(pd.DataFrame({"query": ["a"], "k": [2]}), None, LIMITS)
    with pytest.raises(MlflowException, match="must be an integer"):
        parse_request(["drill"], 2.5, LIMITS)
    with pytest.raises(MlflowException, match="DataFrame with a 'query' column or a list"):
        parse_request({"query": "drill"}, None, LIMITS)


@pytest.fixture(scope="module")
def server(served, small_params):
    """`mlflow models serve -m models:/<name>@champion --env-manager local` on a free loopback port."""
    with scoring_server(f"models:/{MODEL_NAME}@champion", served["uri"],
                        small_params["serving"]["server_start_timeout_s"], served["root"] / "server.log") as url:
        yield url


@pytest.mark.slow
def test_served_champion_answers_and_survives_bad_requests(server, served, small_params):
    timeout = small_params["serving"]["request_timeout_s"]
    status, body = post_json(server, json.dumps({"inputs": ["steel hammer", "brass lamp"], "params": {"k": 4}}), timeout)
    assert status == 200
    assert [len(row["item_ids"]) for row in body["predictions"]] == [4, 4]
    assert set(body["predictions"][0]["item_ids"]) <= served["items"]
    bad_requests = {
        "empty query": (json.dumps({"inputs": [""]}), "query at row 0 is empty"),
        "k out of range": (json.dumps({"inputs": ["drill"], "params": {"k": LIMITS.max_k + 1}}), "it must lie in"),
        "k not an integer": (json.dumps({"inputs": ["drill"], "params": {"k": "many"}}), "k"),
        "long query": (json.dumps({"inputs": ["x" * 500]}), "at most 64 allowed"),
        "wrong JSON shape": (json.dumps({"queries": ["drill"]}), "input fields"),
        "nested list": (json.dumps({"inputs": [["drill", "lamp"]]}), "must be a string"),
        "wrong column": (json.dumps({"dataframe_split": {"columns": ["text"], "data": [["drill"]]}}), "query"),
        "not JSON": ("drill please", "valid JSON"),
    }
    for name, (body_text, message) in bad_requests.items():
        status, body = post_json(server, body_text, timeout)
        assert 400 <= status < 500, (name, status, body)
        assert message in body["message"], (name, body["message"])
    status, body = post_json(server, json.dumps({"dataframe_records": [{"query": "oak shelf"}]}), timeout)
    assert status == 200 and len(body["predictions"][0]["item_ids"]) == LIMITS.default_k


def test_cli_search_prints_the_champion_ranking(served, capsys):
    code = cli.main(["search", "steel hammer", "-k", "3", "--json", "--params", str(served["params_file"]),
                     "--tracking-uri", served["uri"]])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1 and lines[0]["query"] == "steel hammer" and len(lines[0]["item_ids"]) == 3


def test_cli_reports_a_missing_model_clearly(served, capsys):
    code = cli.main(["search", "drill", "--alias", "no-such-alias", "--params", str(served["params_file"]),
                     "--tracking-uri", served["uri"]])
    assert code == 2
    assert "no-such-alias" in capsys.readouterr().err
