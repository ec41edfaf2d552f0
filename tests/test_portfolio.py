"""Hardware portfolio: entries matching this machine are measured first; validate lists them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import tiny_job_text

from autotune.cli import main
from autotune.core.space import parse_space
from autotune.errors import SpecError
from autotune.job.portfolio import Entry, applicable, complete, parse_portfolio
from autotune.job.spec import load_job
from autotune.measure.harness.cpu import RELEVANT_CPU_FLAGS
from autotune.measure.harness.hardware import fingerprint
from autotune.tuning.tuner import run

SPACE = {"parameters": {
    "runtime": {"choices": ["onnxruntime", "torch"]},
    "quantization": {"choices": ["fp32", "int8_dynamic"]},
    "per_channel": {"choices": [False, True], "when": {"quantization": "int8_dynamic",
                                                      "runtime": "onnxruntime"}},
    "batch_size": {"choices": [1, 8]},
    "threads": {"low": 1, "high": 4},
}}


def _flag() -> str:
    flags = fingerprint().cpu_flags
    if not flags:
        pytest.skip("no CPU flags readable here")
    return flags[0]


def test_parse_and_complete() -> None:
    space = parse_space(SPACE)
    entries = parse_portfolio([
        {"name": "int8", "when": {"cpu_flags": ["avx512_vnni"]},
         "config": {"runtime": "onnxruntime", "quantization": "int8_dynamic", "per_channel": True}},
        {"when": {"capabilities": ["cuda"]}, "config": {"runtime": "torch"}},
    ])
    assert entries[0].cpu_flags == ("avx512_vnni",) and entries[1].capabilities == ("cuda",)
    cfg, why = complete(entries[0], space, usable_cores=2)
    assert why == "" and cfg == {"runtime": "onnxruntime", "quantization": "int8_dynamic",
                                 "per_channel": True, "batch_size": 1, "threads": 2}
    # matching: any listed flag; all listed capabilities
    assert entries[0].matches(["sse2", "AVX512_VNNI"], {})
    assert not entries[0].matches(["sse2"], {})
    assert not entries[1].matches([], {"cuda": False})
    found = applicable(entries, space, ["avx512_vnni"], {"cuda": False}, 2)
    assert [e.name for e, _ in found.configs] == ["int8"]
    assert "lacks cuda" in found.skipped[0][1]


def test_entries_that_do_not_fit_the_space_are_skipped() -> None:
    space = parse_space(SPACE)
    e = Entry("x", {"runtime": "torch", "quantization": "bf16"})
    assert complete(e, space, 2)[0] is None
    e = Entry("y", {"runtime": "torch", "graph_optimization": "all"})
    assert "not a parameter" in complete(e, space, 2)[1]
    e = Entry("z", {"runtime": "torch", "per_channel": True})  # inactive on torch
    assert "inactive" in complete(e, space, 2)[1]


@pytest.mark.parametrize("raw, where", [
    ({"config": {}}, "portfolio[0]"),
    ({"config": {"runtime": "torch"}, "when": {"gpu": ["x"]}}, "portfolio[0].when"),
    ({"config": {"runtime": "torch"}, "when": {"cpu_flags": [1]}}, "portfolio[0].when.cpu_flags"),
    ({"config": {"runtime": "torch"}, "extra": 1}, "portfolio[0].extra"),
])
def test_bad_entries_name_the_field(raw: dict, where: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_portfolio([raw])
    assert err.value.path == where


@pytest.mark.slow
def test_first_trials_are_the_matching_portfolio_entries(write_job) -> None:
    flag = _flag()
    absent = next(f for f in RELEVANT_CPU_FLAGS if f not in fingerprint().cpu_flags)
    space = {**SPACE, "portfolio": [
        {"name": "int8 here", "when": {"cpu_flags": [flag]},
         "config": {"runtime": "onnxruntime", "quantization": "int8_dynamic",
                    "per_channel": True}},
        {"name": "never", "when": {"cpu_flags": [absent]},
         "config": {"runtime": "torch", "quantization": "int8_dynamic"}},
        {"name": "torch fp32 batch 8", "config": {"runtime": "torch", "quantization": "fp32",
                                                  "batch_size": 8}},
    ]}
    text = tiny_job_text(3, search_space=space)
    path = write_job(text)
    out = CliRunner().invoke(main, ["validate", str(path)])
    assert out.exit_code == 0, out.output
    assert "int8 here (measured first here)" in out.output
    assert f"never: not here (this machine lacks CPU flag {absent})" in out.output
    job = load_job(path)
    summary = run(job, callbacks=[])
    cores = fingerprint().usable_cores or 1
    threads = min(max(cores, 1), 4)
    by_number = {t.number: dict(t.config) for t in summary.trials}
    assert by_number[0] == {"runtime": "onnxruntime", "quantization": "int8_dynamic",
                            "per_channel": True, "batch_size": 1, "threads": threads}
    assert by_number[1] == {"runtime": "torch", "quantization": "fp32", "batch_size": 8,
                            "threads": threads}
    # each trial says where its configuration came from (also an MLflow tag)
    sources = [t.user_attrs["source"] for t in summary.trials]
    assert sources == ["portfolio: int8 here", "portfolio: torch fp32 batch 8", "agent"]
