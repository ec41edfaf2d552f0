"""The transform cache never unpickles: a malicious file planted in the cache folder is not run."""

from __future__ import annotations

import json
import pathlib
import pickle
import re
from pathlib import Path

import torch

from autotune.measure.transforms import base
from autotune.measure.transforms.base import ModelRef, apply, digest, get_transform

ROOT = Path(__file__).resolve().parents[2] / "autotune"


class _Payload:
    """Unpickling this touches ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def test_planted_cache_entry_is_not_executed(tmp_path: Path) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    cache.mkdir()
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    ref = ModelRef.torch(model, "victim")
    t = get_transform("prune_magnitude")
    key = digest(ref.model_id, t.name, t.resolve_params({"ratio": 0.5}), "")
    evil = pickle.dumps(_Payload(marker))
    for fname in (f"{t.name}-{key}.pt", "../evil.pt", f"{t.name}-{key}.onnx"):
        (cache / Path(fname).name).write_bytes(evil)
        (cache / f"{t.name}-{key}.json").write_text(json.dumps({"file": fname, "info": {}}))
        base._MEMO.clear()  # a fresh process: nothing in memory
        out = apply("prune_magnitude", ref, cache_dir=cache, ratio=0.5)
        assert not marker.exists(), f"the cache entry {fname} was unpickled"
        assert not out.lineage[-1].cached and out.kind == "torch"
    # within one process the result is still reused (a copy, so callers cannot corrupt it)
    again = apply("prune_magnitude", ref, cache_dir=cache, ratio=0.5)
    assert again.lineage[-1].cached and again.module is not out.module
    torch.testing.assert_close(again.module[0].weight, out.module[0].weight)
    assert not list(cache.glob("*.pt.*tmp")) and not marker.exists()


def test_no_unpickling_in_the_package() -> None:
    """No pickle/joblib load, no torch.load without weights_only=True, no allow_pickle=True."""
    bad = []
    pattern = re.compile(r"pickle\.loads?\(|Unpickler|joblib\.load|allow_pickle\s*=\s*True|"
                         r"weights_only\s*=\s*False|torch\.load\((?![^)]*weights_only=True)")
    for path in ROOT.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, bad
