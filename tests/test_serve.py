"""Serving: HTTP API, hardening (limits, timeouts, validation, overload, auth, drain), metrics,
micro-batching, and hot swap under load with zero failed requests.  Real uvicorn servers on free
loopback ports."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _deploy_job import ORT_FP32, ORT_INT8, tuned_job

from autotune.deploy import load
from autotune.deploy.export import pick_trial, register_bundle, set_alias, write_bundle, write_manifest
from autotune.deploy.serve import (
    Limits,
    ModelServer,
    concurrent_load,
    load_test,
    malformed_corpus,
    probe,
)

pytestmark = pytest.mark.slow
ROW = np.linspace(0, 1, 64, dtype=np.float32)
BODY = json.dumps({"inputs": [ROW.tolist()]}).encode()
TOKEN = "s3cret-token"


def _post(url: str, body: bytes, ctype: str = "application/json", accept: str = "",
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype, "Accept": accept,
                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _reload(url: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    return _post(url + "/admin/reload", b"",
                 headers={"Authorization": f"Bearer {token}"} if token else None)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    job = tuned_job()
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for n in (ORT_FP32, ORT_INT8):
        write_bundle(job, pick_trial(job, n), root / f"t{n}")
        out[n] = root / f"t{n}"
    return out


def test_api(bundles: dict[int, Path]) -> None:
    with ModelServer(bundles[ORT_FP32], port=0, poll_interval=0) as srv:
        assert _get(srv.url + "/health")["status"] == "ok"
        meta = _get(srv.url + "/metadata")
        assert meta["trial"] == ORT_FP32 and meta["deploy"]["batch_size"] == 8
        assert meta["hardware"]["matches_this_machine"] is True
        want = load(bundles[ORT_FP32]).predict(ROW[None])
        code, body = _post(srv.url + "/predict", BODY)
        assert code == 200
        np.testing.assert_allclose(json.loads(body)["outputs"], want, rtol=1e-6)
        buf = io.BytesIO()
        np.save(buf, np.stack([ROW, ROW]))
        code, body = _post(srv.url + "/predict", buf.getvalue(), "application/x-npy", "application/x-npy")
        assert code == 200
        np.testing.assert_allclose(np.load(io.BytesIO(body)), np.concatenate([want, want]), rtol=1e-6)
        code, body = _post(srv.url + "/predict", json.dumps({"inputs": [[1.0, 2.0]]}).encode())
        assert code == 400 and b"must be 64" in body and "error" in json.loads(body)
        code, body = _post(srv.url + "/predict", b"not json")
        assert code == 400 and "error" in json.loads(body)


def test_v2_protocol_and_documented_api(bundles: dict[int, Path]) -> None:
    with ModelServer(bundles[ORT_FP32], port=0, poll_interval=0) as srv:
        p = load(bundles[ORT_FP32])
        name = srv.model_name
        spec = p.inputs[0]
        assert _get(srv.url + "/v2/health/live") == {"live": True}
        assert _get(srv.url + "/v2/health/ready") == {"ready": True}
        meta = _get(f"{srv.url}/v2/models/{name}")
        assert meta["inputs"] == [{"name": spec.name, "datatype": "FP32", "shape": [-1, 64]}]
        assert meta["versions"] == [srv.served.version]
        rows = np.stack([ROW, ROW[::-1]])
        req = {"id": "r1", "inputs": [{"name": spec.name, "shape": [2, 64], "datatype": "FP32",
                                       "data": rows.ravel().tolist()}]}
        code, body = _post(f"{srv.url}/v2/models/{name}/infer", json.dumps(req).encode())
        assert code == 200, body
        ans = json.loads(body)
        assert ans["id"] == "r1" and ans["model_name"] == name
        out = ans["outputs"][0]
        np.testing.assert_allclose(np.asarray(out["data"]).reshape(out["shape"]), p.predict(rows),
                                   rtol=1e-6)
        # the documented API: GET / lists the routes, /openapi.json documents the bodies
        index = _get(srv.url + "/")
        assert "POST /v2/models/{name}/infer" in index["routes"] and index["docs"] == "/docs"
        schema = _get(srv.url + "/openapi.json")
        infer = schema["paths"]["/v2/models/{name}/infer"]["post"]
        assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "V2InferRequest")
        assert {"PredictRequest", "V2InferRequest", "V2Tensor"} <= set(schema["components"]["schemas"])
        assert "413" in schema["paths"]["/predict"]["post"]["responses"]
        assert "swagger" in _text(srv.url + "/docs").lower()


def test_every_malformed_request_is_answered_4xx_json_within_a_second(
        bundles: dict[int, Path]) -> None:
    limits = Limits(body_timeout_s=0.4, max_body_bytes=256 * 1024)
    with ModelServer(bundles[ORT_FP32], port=0, poll_interval=0, admin_token=TOKEN,
                     limits=limits) as srv:
        meta = _get(f"{srv.url}/v2/models/{srv.model_name}")
        cases = malformed_corpus(srv.url.split("//")[1], meta, max_body_bytes=limits.max_body_bytes)
        results = probe(srv.url, cases, timeout_s=5.0)
        report = "\n".join(r.line() for r in results)
        print("\n" + report)
        assert len(results) >= 25
        assert all(r.passed for r in results), report
        assert max(r.seconds for r in results) < 1.0, report
        assert _post(srv.url + "/predict", BODY)[0] == 200  # still serving


def test_overload_is_answered_503_with_retry_after_never_a_reset(bundles: dict[int, Path]) -> None:
    limits = Limits(max_inflight=4)
    with ModelServer(bundles[ORT_FP32], port=0, poll_interval=0, max_wait_ms=20,
                     limits=limits) as srv:
        rep = concurrent_load(srv.url, BODY, clients=60, seconds=2.0, backoff_s=0.05)
        print(f"\n{rep.line()}")
        assert rep.resets == 0 and rep.no_answer == 0 and rep.timeouts == 0, rep.errors
        assert rep.connect_errors == 0, rep.errors
        assert rep.ok > 0 and rep.codes.get(503, 0) > 0
        assert set(rep.codes) <= {200, 503} and rep.retry_after_missing == 0
        metrics = _text(srv.url + "/metrics")
        assert re.search(r'autotune_serve_rejected_total\{reason="overloaded"\} [1-9]', metrics)


def test_connection_limit_answers_503_json(bundles: dict[int, Path]) -> None:
    with ModelServer(bundles[ORT_FP32], port=0, poll_interval=0,
                     limits=Limits(max_connections=4)) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        try:
            # the server accepts connections in the order they arrived, so the idle ones are
            # open before this request is read; the wait is for its event loop to run at all
            code, body = _post(srv.url + "/predict", BODY)
            assert code == 503 and "too many open connections" in json.loads(body)["error"]
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 30  # until the server has seen the closes (liveness)
        while (code := _post(srv.url + "/predict", BODY)[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert code == 200


def _recv_all(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def test_slow_headers_and_idle_connections_are_cut_off(bundles: dict[int, Path]) -> None:
    # the server closes after the configured 0.3 s header timeout; the default (10 s) would let
    # the 4 s receive time out (an error).  Not sooner than configured (a lower bound: a busy
    # machine only delays); how much later is the machine's load, so no tighter upper bound.
    with ModelServer(bundles[ORT_FP32], port=0, poll_interval=0,
                     limits=Limits(header_timeout_s=0.3, keep_alive_s=1)) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as s:  # headers never finished
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            data = _recv_all(s, 4.0)
        assert data.startswith(b"HTTP/1.1 408") and b'"error"' in data
        assert time.monotonic() - t0 >= 0.3
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as s:  # connects, says nothing
            assert _recv_all(s, 4.0) == b""
        assert time.monotonic() - t0 >= 0.3


def test_admin_routes_need_the_token(bundles: dict[int, Path]) -> None:
    with ModelServer(bundles[ORT_FP32], port=0, poll_interval=0) as srv:  # no token: disabled
        code, body = _reload(srv.url)
        assert code == 403 and "--admin-token" in json.loads(body)["error"]
    with ModelServer(bundles[ORT_FP32], port=0, poll_interval=0, admin_token=TOKEN) as srv:
        assert _reload(srv.url, token=None)[0] == 401
        assert _reload(srv.url, token="wrong")[0] == 401
        code, body = _reload(srv.url)
        assert code == 200 and json.loads(body)["reloaded"] is False


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? '
                     r'(-?[0-9.e+-]+|\+Inf|-Inf|NaN)$')


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Strict Prometheus text-format reader: every line is a comment or a valid sample."""
    out: dict[str, dict[str, float]] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram"), line
            types[name] = kind
            continue
        if line.startswith("# HELP ") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        name = m[1]
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, f"{name} has no TYPE line"
        out.setdefault(name, {})[m[2] or ""] = float(m[4])
    return out


def test_hot_swap_of_the_bundle_folder_under_load(bundles: dict[int, Path], tmp_path: Path) -> None:
    job = tuned_job()
    served = tmp_path / "served"
    write_bundle(job, pick_trial(job, ORT_FP32), served)
    with ModelServer(served, port=0, poll_interval=0.2, admin_token=TOKEN) as srv:
        v0 = srv.served.version
        swap = lambda: write_bundle(job, pick_trial(job, ORT_INT8), served)  # noqa: E731
        rep = load_test(srv.url, BODY, seconds=3.0, threads=8, events=((1.0, swap),))
        print(f"\nfolder swap under load: {rep.line()}")
        assert rep.failures == 0, rep.errors
        assert srv.swaps == 1 and srv.served.version != v0
        assert set(rep.versions) == {v0, srv.served.version}  # both models answered
        assert _get(srv.url + "/metadata")["trial"] == ORT_INT8
        # POST /admin/reload: nothing changed → no swap
        code, body = _reload(srv.url)
        assert code == 200 and json.loads(body)["reloaded"] is False
        # the metrics tell the same story
        m = parse_metrics(_text(srv.url + "/metrics"))
        assert m["autotune_serve_model_swaps_total"][""] == 1
        info = m["autotune_serve_model_info"]
        assert len(info) == 1 and f'version="{srv.served.version}"' in next(iter(info))
        ok = '{route="/predict",method="POST",code="200"}'
        assert m["autotune_serve_requests_total"][ok] == rep.requests
        buckets = m["autotune_serve_request_duration_seconds_bucket"]
        predict = [v for k, v in buckets.items() if 'route="/predict"' in k]
        assert predict == sorted(predict) and predict[-1] == rep.requests  # cumulative, +Inf = all
        assert m["autotune_serve_batch_items_total"][""] == rep.requests
        assert m["autotune_serve_inflight_requests"][""] == 0


def test_symlink_flip_is_followed_under_concurrent_requests(bundles: dict[int, Path],
                                                           tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(bundles[ORT_FP32])
    with ModelServer(link, port=0, poll_interval=0.1) as srv:
        v0 = srv.served.version

        def flip() -> None:  # once the load is being answered: the swap happens under it
            deadline = time.monotonic() + 30
            while srv.batcher.items == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            tmp = tmp_path / "current.tmp"
            tmp.symlink_to(bundles[ORT_INT8])
            os.replace(tmp, link)  # atomic: ln -sfn

        t = threading.Thread(target=flip)
        t.start()
        rep = concurrent_load(srv.url, BODY, clients=32, seconds=2.0)
        t.join()
        print(f"\nsymlink flip under load: {rep.line()}")
        assert rep.codes == {200: rep.answered} and rep.resets == rep.no_answer == 0, rep.errors
        assert srv.swaps == 1 and srv.served.version != v0
        assert _get(srv.url + "/metadata")["trial"] == ORT_INT8


def test_broken_update_keeps_the_old_model(bundles: dict[int, Path], tmp_path: Path) -> None:
    import shutil

    served = tmp_path / "s"
    shutil.copytree(bundles[ORT_FP32], served)
    with ModelServer(served, port=0, poll_interval=0, admin_token=TOKEN) as srv:
        v0 = srv.served.version
        m = json.loads((served / "manifest.json").read_text())
        m["files"]["model.onnx"]["sha256"] = "0" * 64
        write_manifest(served, m)  # re-sealed: the model's checksum is what no longer matches
        code, body = _reload(srv.url)
        assert code == 500 and b"model.onnx" in body
        assert srv.served.version == v0
        assert _post(srv.url + "/predict", BODY)[0] == 200


def test_micro_batching_gathers_concurrent_requests(bundles: dict[int, Path]) -> None:
    with ModelServer(bundles[ORT_FP32], port=0, poll_interval=0, max_wait_ms=5) as srv:
        rep = load_test(srv.url, BODY, seconds=1.0, threads=8)
        assert rep.failures == 0 and rep.requests > 0
        assert srv.batcher.items == rep.requests
        assert srv.batcher.batches < rep.requests  # several requests shared a predict call


def test_sigterm_drains_in_flight_requests_then_exits(bundles: dict[int, Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", "serve", str(bundles[ORT_FP32]),
                             "--port", "0", "--poll-interval", "0"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 60
        while "serving" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        url = re.search(r"on (http://\S+) ", line)
        assert url, line
        port = int(url[1].rsplit(":", 1)[1])
        s = socket.create_connection(("127.0.0.1", port))
        head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n").encode()
        s.sendall(head + BODY[:100])  # in flight: half its body sent
        deadline = time.monotonic() + 30  # until the server holds it in flight (liveness)
        while "autotune_serve_inflight_requests 1" not in _text(f"http://127.0.0.1:{port}/metrics") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30  # until it stops accepting (liveness)
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            while time.monotonic() < deadline:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                time.sleep(0.05)
        s.sendall(BODY[100:])
        data = _recv_all(s, 10.0)
        s.close()
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert b'"outputs"' in data
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_hot_swap_by_moving_the_registry_alias(bundles: dict[int, Path]) -> None:
    job = tuned_job()
    regs = [register_bundle(bundles[n], tracking_uri=job.tracking_uri, name="serve-test",
                            alias=None, artifacts=job.out_dir / "mlartifacts")
            for n in (ORT_FP32, ORT_INT8)]
    set_alias(job.tracking_uri, "serve-test", "live", regs[0].version)
    with ModelServer("models:/serve-test@live", port=0, poll_interval=0.2,
                     tracking_uri=job.tracking_uri) as srv:
        assert srv.served.version == f"serve-test/{regs[0].version}"
        assert srv.model_name == "serve-test"
        move = lambda: set_alias(job.tracking_uri, "serve-test", "live", regs[1].version)  # noqa: E731
        rep = load_test(srv.url, BODY, seconds=3.0, threads=8, events=((1.0, move),))
        print(f"\nalias swap under load: {rep.line()}")
        assert rep.failures == 0, rep.errors
        deadline = time.monotonic() + 10
        while srv.served.version != f"serve-test/{regs[1].version}" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert srv.served.version == f"serve-test/{regs[1].version}"
        assert _get(srv.url + "/metadata")["trial"] == ORT_INT8


def test_another_model_kind_brings_its_own_routes() -> None:
    from types import SimpleNamespace

    from autotune.deploy.serve import Metrics, create_app, register_kind
    from autotune.errors import AutotuneError

    def add_routes(app, server) -> None:  # e.g. text generation: /v1/completions
        async def completions() -> dict:
            return {"served": server.served.version}

        app.add_api_route("/v1/completions", completions, methods=["POST"])

    stub = SimpleNamespace(served=SimpleNamespace(kind="test-generate", version="v1"),
                           metrics=Metrics(), admin_token=None)
    with pytest.raises(AutotuneError, match="no routes are registered for models of kind"):
        create_app(stub)  # type: ignore[arg-type]
    register_kind("test-generate", add_routes)
    paths = {r.path for r in create_app(stub).routes}  # type: ignore[arg-type]
    assert {"/v1/completions", "/metrics", "/v2/health/ready", "/admin/reload"} <= paths
    assert "/predict" not in paths and "/v2/models/{name}/infer" not in paths
