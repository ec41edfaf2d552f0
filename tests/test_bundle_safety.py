"""Hostile bundles: every path confined to the folder, the manifest under a digest, sizes checked
before anything is read, malformed manifests as one-line errors, optional signatures.

The bundles here are written by hand (a four-input-wide ONNX ``Add``), so the tests need no tuned
job and run in well under a second each.  An audit hook records every file this process opens
while a check runs, so "nothing outside was read" is asserted, not assumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from autotune.deploy import bundle as B
from autotune.deploy.bundle import (
    BundleError,
    TamperedBundleError,
    load,
    read_bundle_file,
    read_manifest,
    require_signature,
    verify,
)
from autotune.deploy.export import write_manifest

_OPENED: list[str] | None = None


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and args and isinstance(args[0], str | bytes | Path):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_hook)  # audit hooks cannot be removed: it records only inside opened()


@contextmanager
def opened() -> Iterator[list[str]]:
    global _OPENED
    _OPENED = seen = []
    try:
        yield seen
    finally:
        _OPENED = None


def _model_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "g", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _entry(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def make_bundle(root: Path, *, key: bytes | None = None, deploy: dict[str, Any] | None = None,
                files: dict[str, Any] | None = None, model: str = "model.onnx") -> Path:
    """A valid bundle at ``root``; ``deploy``/``files``/``model`` override what the manifest
    says (sealed all the same: the attacks below need a manifest whose digest matches)."""
    root.mkdir(parents=True, exist_ok=True)
    data = _model_bytes()
    (root / "model.onnx").write_bytes(data)
    settings = {"format": B.FORMAT, "model": "model.onnx", "runtime": "onnxruntime",
                "execution_provider": "cpu", "threads": 1, "inter_op_threads": 1,
                "execution_mode": "sequential", "graph_optimization": "all", "batch_size": 1,
                **(deploy or {})}
    text = yaml.safe_dump(settings).encode()
    (root / "deploy.yaml").write_bytes(text)
    listed = {"model.onnx": _entry(data), "deploy.yaml": _entry(text)} if files is None else files
    write_manifest(root, {"format": B.FORMAT, "model": model, "files": listed}, key=key)
    return root


def _refused(exc: pytest.ExceptionInfo[BaseException], *needles: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, BundleError), msg
    for n in needles:
        assert n in msg, msg
    return msg


def _inside(seen: list[str], root: Path) -> list[str]:
    """Opened paths outside ``root`` (Python's own module files excepted)."""
    root = root.resolve()
    return [p for p in seen if not Path(p).resolve().is_relative_to(root)
            and not p.endswith((".py", ".pyc", ".so")) and "site-packages" not in p
            and "__pycache__" not in p]


def test_a_valid_bundle_loads(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    out = load(b).predict(np.zeros((2, 4), np.float32))
    np.testing.assert_array_equal(out, np.tile([1.0, 2.0, 3.0, 4.0], (2, 1)))
    assert set(verify(b)["files"]) == {"model.onnx", "deploy.yaml"}


def test_model_path_out_of_the_bundle_is_refused_unread(tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(_model_bytes())
    # deploy.yaml and the manifest agree on ../outside.onnx and its (correct) checksum
    b = make_bundle(tmp_path / "b", deploy={"model": "../outside.onnx"}, model="../outside.onnx",
                    files=None)
    m = json.loads((b / "manifest.json").read_text())
    files = {**m["files"], "../outside.onnx": _entry(outside.read_bytes())}
    write_manifest(b, {k: v for k, v in m.items() if k != "integrity"} | {"files": files})
    with opened() as seen, pytest.raises(TamperedBundleError) as exc:
        load(b)
    _refused(exc, "../outside.onnx", "not inside the bundle")
    assert str(outside) not in seen and not _inside(seen, b)


def test_absolute_file_entry_is_refused_without_reading_or_hashing_it(tmp_path: Path) -> None:
    target = Path("/etc/hostname") if Path("/etc/hostname").is_file() else Path("/etc/passwd")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    b = make_bundle(tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["files"][str(target)] = {"sha256": "0" * 64, "bytes": 10}
    write_manifest(b, m)
    for fn in (verify, load):
        with opened() as seen, pytest.raises(TamperedBundleError) as exc:
            fn(b)
        msg = _refused(exc, str(target))
        assert digest not in msg and str(target) not in seen and not _inside(seen, b)


def test_symlink_out_of_the_bundle_is_refused_without_reading(tmp_path: Path) -> None:
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:  # 1 GiB sparse: reading it would take seconds
        f.truncate(1 << 30)
    b = make_bundle(tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    (b / "data.bin").symlink_to(huge)
    m["files"]["data.bin"] = {"sha256": "0" * 64, "bytes": 1 << 30}
    write_manifest(b, m)
    with opened() as seen, pytest.raises(TamperedBundleError) as exc:
        verify(b)
    _refused(exc, "data.bin", "symlink")
    assert str(huge) not in seen
    # the model file itself replaced by a symlink to an identical copy outside: still refused
    b2 = make_bundle(tmp_path / "b2")
    copy = tmp_path / "copy.onnx"
    copy.write_bytes((b2 / "model.onnx").read_bytes())
    (b2 / "model.onnx").unlink()
    (b2 / "model.onnx").symlink_to(copy)
    with opened() as seen, pytest.raises(TamperedBundleError) as exc:
        load(b2)
    _refused(exc, "model.onnx", "symlink")
    assert str(copy) not in seen
    # a symlinked folder on the way
    b3 = make_bundle(tmp_path / "b3")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w.bin").write_bytes(b"x")
    (b3 / "sub").symlink_to(tmp_path / "elsewhere")
    m = json.loads((b3 / "manifest.json").read_text())
    m["files"]["sub/w.bin"] = _entry(b"x")
    write_manifest(b3, m)
    with pytest.raises(TamperedBundleError) as exc:
        verify(b3)
    _refused(exc, "sub", "symlink")


def test_sizes_are_checked_before_hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    hashed: list[int] = []
    real = hashlib.sha256

    def counting(data: bytes = b"", **kw: Any) -> Any:
        hashed.append(len(data))
        return real(data, **kw)

    b = make_bundle(tmp_path / "b")
    with open(b / "model.onnx", "r+b") as f:  # the same file grown to 1 GiB (sparse)
        f.truncate(1 << 30)
    monkeypatch.setattr(B.hashlib, "sha256", counting)
    with pytest.raises(TamperedBundleError) as exc:
        load(b)
    _refused(exc, "model.onnx", "bytes")
    assert max(hashed) < 1 << 20  # the manifest was hashed, the 1 GiB file never


def test_fifo_and_manifest_symlink_do_not_hang(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    (b / "model.onnx").unlink()
    os.mkfifo(b / "model.onnx")  # a blocking open or read would hang forever
    with pytest.raises(TamperedBundleError) as exc:
        load(b)
    _refused(exc, "not a plain file")
    b2 = make_bundle(tmp_path / "b2")
    real = tmp_path / "real-manifest.json"
    (b2 / "manifest.json").rename(real)
    (b2 / "manifest.json").symlink_to(real)
    with opened() as seen, pytest.raises(TamperedBundleError) as exc:
        read_manifest(b2)
    _refused(exc, "symlink")
    assert str(real) not in seen
    b3 = make_bundle(tmp_path / "b3")
    (b3 / "manifest.json").unlink()
    os.mkfifo(b3 / "manifest.json")
    with pytest.raises(TamperedBundleError) as exc:
        read_manifest(b3)
    _refused(exc, "not a plain file")


def test_manifest_is_covered_by_its_digest(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["metrics"] = {"latency_p50_ms": 0.001}  # a flattering edit, digest left as it was
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TamperedBundleError) as exc:
        load(b)
    _refused(exc, "manifest.json was modified")
    del m["integrity"]
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TamperedBundleError) as exc:
        verify(b)
    _refused(exc, "no manifest digest")
    # re-indenting the file is not a modification (the digest covers the canonical form)
    b2 = make_bundle(tmp_path / "b2")
    (b2 / "manifest.json").write_text(json.dumps(json.loads((b2 / "manifest.json").read_text())))
    load(b2)


@pytest.mark.parametrize("files", [
    [], "model.onnx", {"model.onnx": "abc"}, {"model.onnx": {}}, {"model.onnx": {"sha256": 5}},
    {"model.onnx": {"sha256": "a" * 64}}, {"model.onnx": {"sha256": "a" * 64, "bytes": -1}},
    {"model.onnx": {"sha256": "a" * 64, "bytes": "12"}}, {"": {"sha256": "a" * 64, "bytes": 1}},
    {"a/../../x": {"sha256": "a" * 64, "bytes": 1}}, {"a\\..\\x": {"sha256": "a" * 64, "bytes": 1}},
    {"manifest.json": {"sha256": "a" * 64, "bytes": 1}},
])
def test_malformed_files_section_is_a_one_line_error(tmp_path: Path, files: Any) -> None:
    b = make_bundle(tmp_path / "b", files=files)
    for fn in (verify, load):
        with pytest.raises(BundleError) as exc:
            fn(b)
        _refused(exc)


def test_unlisted_and_unsafe_names_through_the_reader(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    files = read_manifest(b)["files"]
    assert read_bundle_file(b, "model.onnx", files) == (b / "model.onnx").read_bytes()
    for name in ("../b/model.onnx", "/etc/passwd", "./model.onnx", "extra.bin"):
        with pytest.raises(BundleError) as exc:
            read_bundle_file(b, name, {**files, name: files["model.onnx"]}
                             if name != "extra.bin" else files)
        _refused(exc)


def test_signed_bundles(tmp_path: Path) -> None:
    key, other = b"k" * 32, b"o" * 32
    signed = make_bundle(tmp_path / "signed", key=key)
    unsigned = make_bundle(tmp_path / "unsigned")
    assert load(signed, key=key).predict(np.zeros((1, 4), np.float32)).shape == (1, 4)
    load(signed)  # no key: the signature is not required
    with pytest.raises(TamperedBundleError) as exc:
        load(unsigned, key=key)
    _refused(exc, "not signed")
    with pytest.raises(TamperedBundleError) as exc:
        load(signed, key=other)
    _refused(exc, "invalid signature", "signed with key")
    # re-sealing an edited manifest without the key drops the signature: refused
    m = json.loads((signed / "manifest.json").read_text())
    m["metrics"] = {"x": 1.0}
    write_manifest(signed, m)
    with pytest.raises(TamperedBundleError) as exc:
        verify(signed, key=key)
    _refused(exc, "not signed")
    # a forged signature value (the digest re-computed, the HMAC guessed)
    m = json.loads((make_bundle(tmp_path / "forged", key=key) / "manifest.json").read_text())
    m["integrity"]["signature"]["value"] = "0" * 64
    (tmp_path / "forged" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TamperedBundleError) as exc:
        verify(tmp_path / "forged", key=key)
    _refused(exc, "invalid signature")
    # the process-wide policy (autotune serve --verify-key): every load needs the key
    keyfile = tmp_path / "key"
    keyfile.write_bytes(key + b"\n")
    assert B.read_key(keyfile) == key
    require_signature(B.read_key(keyfile))
    try:
        load(make_bundle(tmp_path / "s2", key=key))
        with pytest.raises(TamperedBundleError):
            load(unsigned)
    finally:
        require_signature(None)
    load(unsigned)
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(BundleError, match="at least 16"):
        B.read_key(short)


@pytest.mark.parametrize("text", [b"!!python/object/apply:os.system ['touch /tmp/x']\n",
                                  b"\xff\xfe not utf-8", b"[1, 2]\n", b"a: [unclosed\n"])
def test_hostile_deploy_yaml_is_a_one_line_error(tmp_path: Path, text: bytes) -> None:
    b = make_bundle(tmp_path / "b")
    (b / "deploy.yaml").write_bytes(text)
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["deploy.yaml"] = _entry(text)  # re-sealed: only the content is hostile
    write_manifest(b, m)
    with pytest.raises(BundleError) as exc:
        load(b)
    _refused(exc, "deploy.yaml")


def test_serve_with_a_verify_key_refuses_an_unsigned_bundle(tmp_path: Path) -> None:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    keyfile = tmp_path / "bundle.key"
    keyfile.write_bytes(b"s" * 32)
    b = make_bundle(tmp_path / "unsigned")
    out = subprocess.run([sys.executable, "-m", "autotune.cli", "serve", str(b), "--port", "0",
                          "--verify-key", str(keyfile)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 2 and "not signed" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
