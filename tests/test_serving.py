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
from sid_models.serving.pyfunc import PyfuncSearcher, ServingLimits, log_searcher_model, parse_request
from sid_models.serving.server import post_json, scoring_server

MODEL_NAME = "sid-retrieval-test"
LIMITS = ServingLimits(default_k=5, max_k=20, max_query_chars=64, max_batch=8, max_results=60,
                       max_request_bytes=4096)
LIMIT_KEYS = ("default_k", "max_k", "max_query_chars", "max_batch", "max_results", "max_request_bytes")


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_params, small_prepared, small_stage_folders):
    """A MiniLM searcher logged as a pyfunc, registered, aliased champion, in a temporary MLflow store."""
    root = tmp_path_factory.mktemp("serving")
    params = {**small_params, "registry": {**small_params["registry"], "model_name": MODEL_NAME},
              "serving": {**small_params["serving"], **{key: getattr(LIMITS, key) for key in LIMIT_KEYS}}}
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


def test_searcher_splits_a_large_call_into_requests_the_model_accepts(served, small_prepared):
    # 30 queries x k 5 = 150 results: over max_results (60) and max_batch (8) in one request
    queries = small_prepared.queries["text"].tolist()[:30]
    with pytest.raises(MlflowException, match="at most"):
        served["model"].predict(pd.DataFrame({"query": queries}), params={"k": 5})
    searcher = PyfuncSearcher(served["model"])
    found = searcher.search(queries, 5)
    assert len(found) == 30 and all(len(hits) == 5 for hits in found)
    single = served["model"].predict(pd.DataFrame({"query": queries[17:18]}), params={"k": 5})
    assert [item for item, _ in found[17]] == list(single["item_ids"][0])


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
    with pytest.raises(MlflowException, match="8 queries x k = 160 results in one request; at most 60"):
        parse_request(["drill"] * 8, 20, LIMITS)


def raw_post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, dict]:
    """A POST with exactly these headers (urllib would add a Content-Type)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("POST", parts.path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def server(served, small_params):
    """The guarded scoring server (`python -m sid_models.serving.app`) on a free loopback port."""
    with scoring_server(f"models:/{MODEL_NAME}@champion", served["uri"],
                        small_params["serving"]["server_start_timeout_s"], served["root"] / "server.log") as url:
        yield url


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
        "null query": (json.dumps({"inputs": [None]}), "query at row 0 must be a string, got NoneType"),
        "number query": (json.dumps({"inputs": [123]}), "got int: 123"),
        "boolean query": (json.dumps({"inputs": [True]}), "got bool: True"),
        "null among strings": (json.dumps({"inputs": ["drill", None]}), "query at row 1 must be a string"),
        "null record": (json.dumps({"dataframe_records": [{"query": None}]}), "row 0 must be a string"),
        "number in split": (json.dumps({"dataframe_split": {"columns": ["query"], "data": [[7]]}}), "got int"),
        "zero-width query": (json.dumps({"inputs": ["\u200b\u200b"]}), "row 0 is empty"),
        "too many results": (json.dumps({"inputs": ["drill"] * 4, "params": {"k": 20}}), "at most 60 allowed"),
        "JSON array": (json.dumps(["drill"]), "must be an object"),
    }
    for name, (body_text, message) in bad_requests.items():
        status, body = post_json(server, body_text, timeout)
        assert 400 <= status < 500, (name, status, body)
        assert message in body["message"], (name, body["message"])
    long_query = "y" * 3000
    status, body = post_json(server, json.dumps({"inputs": [long_query]}), timeout)
    assert status == 400 and "3000 characters" in body["message"] and len(body["message"]) < 300
    status, body = post_json(server, json.dumps({"inputs": ["z" * 5000]}), timeout)
    assert status == 413 and "at most 4096 allowed" in body["message"]
    status, body = raw_post(server, json.dumps({"inputs": ["drill"]}).encode(), {}, timeout)
    assert status == 415 and "no Content-Type" in body["message"]
    status, body = raw_post(server, b"drill", {"Content-Type": "text/plain"}, timeout)
    assert status == 415 and "text/plain" in body["message"]
    status, body = raw_post(server, b"x" * 100, {"Content-Type": "application/json", "Content-Length": "99999999"},
                            timeout)
    assert status == 413
    status, body = post_json(server, json.dumps({"dataframe_records": [{"query": "oak shelf"}]}), timeout)
    assert status == 200 and len(body["predictions"][0]["item_ids"]) == LIMITS.default_k


@pytest.mark.slow
def test_served_champion_under_load_answers_every_request(server, small_params):
    """4 clients x 200 requests on 127.0.0.1: no error, and the server answers afterwards."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    timeout = small_params["serving"]["request_timeout_s"]
    queries = ["steel hammer", "brass lamp", "oak shelf", "garden hose"]

    def client(index: int) -> list[tuple[int, float]]:
        out = []
        for request in range(200):
            started = time.perf_counter()
            status, _ = post_json(server, json.dumps({"inputs": [queries[(index + request) % 4]]}), timeout)
            out.append((status, time.perf_counter() - started))
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        answers = [answer for answers in pool.map(client, range(4)) for answer in answers]
    seconds = time.perf_counter() - started
    latencies = sorted(latency for _, latency in answers)
    print(f"load: {len(answers)} requests in {seconds:.1f} s = {len(answers) / seconds:.1f} req/s, "
          f"p95 {1000 * latencies[int(0.95 * len(latencies))]:.0f} ms")
    assert [status for status, _ in answers].count(200) == 800
    assert post_json(server, json.dumps({"inputs": ["drill"]}), timeout)[0] == 200


def test_cli_search_prints_the_champion_ranking(served, capsys):
    code = cli.main(["search", "steel hammer", "-k", "3", "--json", "--params", str(served["params_file"]),
                     "--tracking-uri", served["uri"]])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1 and lines[0]["query"] == "steel hammer" and len(lines[0]["results"]) == 3
    first = lines[0]["results"][0]
    assert first["rank"] == 1 and first["item_id"] in served["items"] and first["title"] and first["segment"]


def test_cli_prints_titles_and_flags_a_query_without_a_confident_match(served, capsys, monkeypatch, small_prepared):
    import io

    title = small_prepared.items["title"].iloc[0]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{title}\n\nzzzz qqqq\n"))
    code = cli.main(["search", "-k", "2", "--params", str(served["params_file"]), "--tracking-uri", served["uri"]])
    assert code == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert len(blocks) == 2                       # one answer per non-empty stdin line, one model load
    assert blocks[0].startswith(f"# {title}") and "no confident match" not in blocks[0]
    assert title in blocks[0].splitlines()[1]     # the item's own title is its best match
    assert blocks[1].startswith("# zzzz qqqq") and "no confident match" in blocks[1]


def test_cli_refuses_an_argument_that_is_not_utf8(served, capsys):
    not_utf8 = b"caf\xff drill".decode("utf-8", "surrogateescape")     # as Python receives such argv bytes
    code = cli.main(["search", not_utf8, "--params", str(served["params_file"]), "--tracking-uri", served["uri"]])
    assert code == 2 and "query 1 is not UTF-8 text" in capsys.readouterr().err


def test_cli_gives_up_quickly_on_an_unreachable_tracking_server(served, capsys, monkeypatch):
    import time

    from sid_models.serving.server import free_port

    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    code = cli.main(["search", "drill", "--params", str(served["params_file"]),
                     "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    assert code == 2 and "Connection refused" in capsys.readouterr().err
    assert time.monotonic() - started < 60        # MLflow's own retries would wait minutes


def test_cli_names_a_missing_params_file(capsys, tmp_path):
    code = cli.main(["search", "drill", "--params", str(tmp_path / "nope.yaml")])
    assert code == 2 and f"params file not found: {tmp_path / 'nope.yaml'}" in capsys.readouterr().err


def test_cli_refuses_a_store_that_does_not_exist(served, capsys, tmp_path):
    missing = tmp_path / "nowhere" / "mlflow.db"
    code = cli.main(["search", "drill", "--params", str(served["params_file"]), "--tracking-uri", f"sqlite:///{missing}"])
    assert code == 2 and "no MLflow store at" in capsys.readouterr().err and not missing.exists()


def test_cli_reports_a_missing_model_clearly(served, capsys):
    code = cli.main(["search", "drill", "--alias", "no-such-alias", "--params", str(served["params_file"]),
                     "--tracking-uri", served["uri"]])
    assert code == 2
    assert "no-such-alias" in capsys.readouterr().err


@pytest.fixture(scope="module")
def search_page(served):
    """`python -m sid_models.serving.page` on a free loopback port, as `sidr page` starts it."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from sid_models.serving.server import free_port

    port = free_port()
    log = open(served["root"] / "page.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "sid_models.serving.page", "--params", str(served["params_file"]),
                                "--tracking-uri", served["uri"], "-p", str(port), "-k", "3"],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base, timeout=2).read()
                break
            except OSError:
                assert process.poll() is None, (served["root"] / "page.log").read_text()
                assert time.monotonic() < deadline, "search page did not start"
                time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_search_page_shows_the_champion_beside_bm25(search_page, small_prepared):
    import urllib.parse
    import urllib.request

    title = str(small_prepared.items["title"].iloc[0])
    page = urllib.request.urlopen(f"{search_page}?{urllib.parse.urlencode({'q': title})}", timeout=60).read().decode()
    assert page.count("<table>") == 2 and "champion (models:/" in page and "BM25 (stemmed)" in page
    assert page.count("class='result'") == 6 and " ms</p>" in page
    assert title.replace("&", "&amp;") in page
    nonsense = urllib.request.urlopen(f"{search_page}?q=zzzz+qqqq", timeout=60).read().decode()
    assert "No confident match" in nonsense
    hostile = urllib.request.urlopen(f"{search_page}?q=%3Cscript%3Ex%3C/script%3E", timeout=60).read().decode()
    assert "<script>" not in hostile                          # the query is escaped, not run


def test_search_page_renders_in_a_headless_browser(search_page, small_prepared, tmp_path):
    import shutil
    import subprocess
    import urllib.parse

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium installed (Debian package `chromium`)")
    url = f"{search_page}?{urllib.parse.urlencode({'q': str(small_prepared.items['title'].iloc[0])})}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"]
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="result"') == 6
    screenshot = tmp_path / "search_page.png"
    subprocess.run([browser, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    assert screenshot.stat().st_size > 10_000
    shutil.copy(screenshot, served_screenshot_path())


def served_screenshot_path():
    """Where the last browser test leaves its screenshot for a person to look at."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "search_page.png"
