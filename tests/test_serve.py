"""Serving: HTTP API, micro-batching, and hot swap under load with zero failed requests."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _deploy_job import ORT_FP32, ORT_INT8, tuned_job

from autotune.deploy import load
from autotune.deploy.export import (
    pick_trial,
    register_bundle,
    set_alias,
    write_bundle,
    write_manifest,
)
from autotune.deploy.serve import ModelServer, load_test

pytestmark = pytest.mark.slow
ROW = np.linspace(0, 1, 64, dtype=np.float32)
BODY = json.dumps({"inputs": [ROW.tolist()]}).encode()


def _post(url: str, body: bytes, ctype: str = "application/json", accept: str = "") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype, "Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


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
        assert code == 400 and b"must be 64" in body
        code, body = _post(srv.url + "/predict", b"not json")
        assert code == 400


def test_micro_batching_gathers_concurrent_requests(bundles: dict[int, Path]) -> None:
    with ModelServer(bundles[ORT_FP32], port=0, poll_interval=0, max_wait_ms=5) as srv:
        rep = load_test(srv.url, BODY, seconds=1.0, threads=8)
        assert rep.failures == 0 and rep.requests > 0
        assert srv.batcher.items == rep.requests
        assert srv.batcher.batches < rep.requests  # several requests shared a predict call


def test_hot_swap_of_the_bundle_folder_under_load(bundles: dict[int, Path], tmp_path: Path) -> None:
    job = tuned_job()
    served = tmp_path / "served"
    write_bundle(job, pick_trial(job, ORT_FP32), served)
    with ModelServer(served, port=0, poll_interval=0.2) as srv:
        v0 = srv.served.version
        swap = lambda: write_bundle(job, pick_trial(job, ORT_INT8), served)  # noqa: E731
        rep = load_test(srv.url, BODY, seconds=3.0, threads=8, events=((1.0, swap),))
        print(f"\nfolder swap under load: {rep.line()}")
        assert rep.failures == 0, rep.errors
        assert srv.swaps == 1 and srv.served.version != v0
        assert set(rep.versions) == {v0, srv.served.version}  # both models answered
        assert _get(srv.url + "/metadata")["trial"] == ORT_INT8
        # POST /admin/reload: nothing changed → no swap
        code, body = _post(srv.url + "/admin/reload", b"")
        assert code == 200 and json.loads(body)["reloaded"] is False


def test_broken_update_keeps_the_old_model(bundles: dict[int, Path], tmp_path: Path) -> None:
    import shutil

    served = tmp_path / "s"
    shutil.copytree(bundles[ORT_FP32], served)
    with ModelServer(served, port=0, poll_interval=0) as srv:
        v0 = srv.served.version
        m = json.loads((served / "manifest.json").read_text())
        m["files"]["model.onnx"]["sha256"] = "0" * 64
        write_manifest(served, m)  # re-sealed: the model's checksum is what no longer matches
        code, body = _post(srv.url + "/admin/reload", b"")
        assert code == 500 and b"model.onnx" in body
        assert srv.served.version == v0
        assert _post(srv.url + "/predict", BODY)[0] == 200


def test_hot_swap_by_moving_the_registry_alias(bundles: dict[int, Path]) -> None:
    job = tuned_job()
    regs = [register_bundle(bundles[n], tracking_uri=job.tracking_uri, name="serve-test",
                            alias=None, artifacts=job.out_dir / "mlartifacts")
            for n in (ORT_FP32, ORT_INT8)]
    set_alias(job.tracking_uri, "serve-test", "live", regs[0].version)
    with ModelServer("models:/serve-test@live", port=0, poll_interval=0.2,
                     tracking_uri=job.tracking_uri) as srv:
        assert srv.served.version == f"serve-test/{regs[0].version}"
        move = lambda: set_alias(job.tracking_uri, "serve-test", "live", regs[1].version)  # noqa: E731
        rep = load_test(srv.url, BODY, seconds=3.0, threads=8, events=((1.0, move),))
        print(f"\nalias swap under load: {rep.line()}")
        assert rep.failures == 0, rep.errors
        deadline = time.monotonic() + 10
        while srv.served.version != f"serve-test/{regs[1].version}" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert srv.served.version == f"serve-test/{regs[1].version}"
        assert _get(srv.url + "/metadata")["trial"] == ORT_INT8
