from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from autotune.errors import SpecError
from autotune.job.spec import load_job
from tests.conftest import EXPERIMENTS, TINY_JOB


def _job(write_job, text: str):
    return write_job(TINY_JOB.replace("MAXTRIALS", "4").replace(*text) if isinstance(text, tuple)
                     else text)


def test_quickstart_job_is_valid():
    job = load_job(EXPERIMENTS / "digits-cpu.yaml")
    assert job.objective_pairs == [("latency_p95_ms", "minimize"), ("accuracy", "maximize"),
                                  ("model_size_mb", "minimize")]
    assert "quantization" in job.space
    assert job.storage_url.startswith("sqlite:///")
    with pytest.raises(ValidationError):  # immutable
        job.name = "x"  # type: ignore[misc]


def test_typo_in_key_names_file_line_field_and_suggestion(write_job):
    path = _job(write_job, ("budget: {max_trials: 4}", "budget:\n  max_trails: 4"))
    with pytest.raises(SpecError) as e:
        load_job(path)
    msg = str(e.value)
    line = path.read_text().splitlines().index("  max_trails: 4") + 1
    assert e.value.line == line
    assert e.value.path == "budget.max_trails"
    assert str(path) in msg and f"line {line}" in msg and "max_trails" in msg
    assert "Did you mean 'max_trials'" in msg


def test_wrong_type_says_expected_and_found(write_job):
    path = _job(write_job, ("budget: {max_trials: 4}", "budget: {max_trials: lots}"))
    with pytest.raises(SpecError) as e:
        load_job(path)
    assert e.value.path == "budget.max_trials"
    assert "integer" in str(e.value) and "'lots'" in str(e.value)
    assert e.value.line == path.read_text().splitlines().index("budget: {max_trials: lots}") + 1


def test_unknown_metric_in_constraint(write_job):
    path = _job(write_job, ("accuracy_drop <= 5%", "acuracy_drop <= 5%"))
    with pytest.raises(SpecError) as e:
        load_job(path)
    assert e.value.path == "constraints[0]"
    assert "unknown metric 'acuracy_drop'" in str(e.value)
    assert "Did you mean 'accuracy_drop'" in str(e.value)
    assert e.value.line == path.read_text().splitlines().index("  - acuracy_drop <= 5%") + 1


def test_bad_constraint_syntax(write_job):
    path = _job(write_job, ("accuracy_drop <= 5%", "accuracy_drop around 5"))
    with pytest.raises(SpecError, match="METRIC OP VALUE"):
        load_job(path)


def test_unknown_objective_metric_and_agent(write_job):
    with pytest.raises(SpecError, match="unknown metric 'latency_p96_ms'"):
        load_job(_job(write_job, ("[latency_p95_ms, accuracy]", "[latency_p96_ms, accuracy]")))
    with pytest.raises(SpecError, match="unknown agent 'tpee'") as e:
        load_job(_job(write_job, ("name: tpe,", "name: tpee,")))
    assert e.value.path == "agent.name"


def test_space_errors_are_located(write_job):
    path = _job(write_job, ("pruning_ratio: {low: 0.0, high: 0.6, step: 0.3}",
                            "pruning_ratio: {low: 0.9, high: 0.6}"))
    with pytest.raises(SpecError, match="greater than high") as e:
        load_job(path)
    assert e.value.path == "search_space.parameters.pruning_ratio"
    assert e.value.line is not None


def test_duplicate_key_and_bad_yaml(write_job, tmp_path):
    with pytest.raises(SpecError, match="appears twice"):
        load_job(write_job("name: a\nname: b\n"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job(bad)


def test_missing_section(write_job):
    with pytest.raises(SpecError, match="required field is missing") as e:
        load_job(write_job("name: x\nobjectives: [accuracy]\nsearch_space: {}\n"))
    assert e.value.path in ("model", "evaluation")


def test_cli_prints_one_paragraph_without_traceback(write_job):
    path = _job(write_job, ("budget: {max_trials: 4}", "budget: {max_trails: 4}"))
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "max_trails" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_preset_overrides(write_job):
    job = load_job(write_job("""
        name: p
        model: {factory: digits_model:build}
        evaluation: {dataset: digits_model:validation_data}
        search_space:
          preset: cpu-inference
          overrides:
            batch_size: [4]
            graph_optimization: null
        objectives: [latency_p50_ms]
    """))
    assert job.space["batch_size"].choices == (4,)
    assert "graph_optimization" not in job.space
    with pytest.raises(SpecError, match="no search-space preset named 'nope'"):
        load_job(write_job("""
            name: p
            model: {factory: digits_model:build}
            evaluation: {dataset: digits_model:validation_data}
            search_space: {preset: nope}
            objectives: [latency_p50_ms]
        """))


# ------------------------------------------------------------------ hostile and careless job files
QUICKSTART = (EXPERIMENTS / "digits-cpu.yaml").read_text()
OVERRIDE = "batch_size: {choices: [1, 16, 64]}"
AGENT_LINE = QUICKSTART.splitlines().index("agent:") + 1
#: the quickstart's overrides block, whole (a case replaces it with a list)
OVERRIDES = QUICKSTART[QUICKSTART.index("  overrides:\n"):QUICKSTART.index("objectives:")]


def _line_of(path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _refused(write_job, text, path: str | None, *words: str, line_text: str | None = None):
    """Load ``text`` (str or bytes); it must fail with a located SpecError naming ``path``."""
    if isinstance(text, bytes):
        p = write_job("")
        p.write_bytes(text)
    else:
        p = write_job(text)
    with pytest.raises(SpecError) as e:
        load_job(p)
    err = e.value
    assert err.file == str(p) and err.line, str(err)
    assert err.path == path, str(err)
    for w in words:
        assert w in str(err), str(err)
    if line_text is not None:
        assert err.line == _line_of(p, line_text), str(err)
    assert "\n" not in str(err)
    return err


@pytest.mark.parametrize(("old", "new", "path", "words"), [
    (OVERRIDE, "runtime: {choices: [torch, tensorflow]}",
     "search_space.overrides.runtime.choices[1]", ["'tensorflow'", "torch, onnxruntime"]),
    (OVERRIDE, "quantization: [fp32, int4]",
     "search_space.overrides.quantization[1]", ["'int4'", "int8_dynamic"]),
    (OVERRIDE, "pruning_ratio: {low: 0.0, high: 0.5, step: 0}",
     "search_space.overrides.pruning_ratio.step", ["greater than 0"]),
    (OVERRIDE, "pruning_ratio: {low: .nan, high: 0.5}",
     "search_space.overrides.pruning_ratio.low", ["finite", "nan"]),
    (OVERRIDE, "threads: {low: 1, high: .inf}",
     "search_space.overrides.threads.high", ["finite", "inf"]),
    (OVERRIDE, "threads: {low: 4, high: 1}", "search_space.overrides.threads",
     ["greater than high"]),
    (OVERRIDE, "batch_size: {choices: []}", "search_space.overrides.batch_size.choices",
     ["non-empty list"]),
    (OVERRIDE, "pruning_ratio: {low: 0.0, high: 1.0}",
     "search_space.overrides.pruning_ratio.high", ["[0, 1)"]),
    (OVERRIDE, "batch_size: [0, 8]", "search_space.overrides.batch_size[0]", [">= 1"]),
    (OVERRIDE, "threads: {low: 1.0, high: 2.5}", "search_space.overrides.threads",
     ["whole numbers"]),
    (OVERRIDE, "per_channel: {choices: [0, 1]}", "search_space.overrides.per_channel.choices[0]",
     ["true or false"]),
    (OVERRIDE, "batchsize: [1]", "search_space.overrides.batchsize",
     ["does not know the parameter", "Did you mean 'batch_size'"]),
    (OVERRIDE, "graph_optimization: {choices: [all], when: {runtime: tensorflow}}",
     "search_space.overrides.graph_optimization.when.runtime", ["never applies"]),
    (OVERRIDE, "quantization: {choices: [fp32], invalid: 5}",
     "search_space.overrides.quantization.invalid", ["list of rules", "found 5"]),
    (OVERRIDE, "quantization: {choices: [fp32], invalid: [{values: [fp32]}]}",
     "search_space.overrides.quantization.invalid[0]", ["'when' is missing"]),
    (OVERRIDE, "threads: {low: 1, high: 4, log: 'no'}", "search_space.overrides.threads.log",
     ["true or false"]),
    (OVERRIDE, "batch_size: {choices: [[1], 2]}",
     "search_space.overrides.batch_size.choices[0]", ["found a list"]),
    (OVERRIDE, "nope: null", "search_space.overrides.nope", ["does not have"]),
    (OVERRIDE, "runtime: null", "search_space.overrides",
     ["preset's parameter 'quantization'", "cpu-inference.yaml, line", "'runtime'"]),
    (OVERRIDES, "  overrides: [batch_size]\n", "search_space.overrides",
     ["expected a mapping", "found a list"]),
    ("seed: 0", "seed: -1", "agent.seed", ["greater than or equal to 0", "-1"]),
    ("min_repeats: 30", "min_repeats: 30\n  max_repeats: 10", "measurement.max_repeats",
     ["below min_repeats"]),
    ("max_trials: 24", "max_trials: 24\n  timeout: -5", "budget.timeout",
     ["positive duration"]),
    ("max_trials: 24", "max_trials: 24\n  timeout: .nan", "budget.timeout",
     ["positive duration"]),
    ("max_time_s: 1.0", "max_time_s: .inf", "measurement.max_time_s", ["finite"]),
    ("warmup: 5", "warmup: false", "measurement.warmup", ["expected a number", "false"]),
    ("name: digits-cpu", "name: digits-cpu\nstorage: not a url", "storage", ["database URL"]),
    ("name: digits-cpu", "name: digits-cpu\nstorage: 'nosuchdb://x'", "storage",
     ["database URL"]),
    ("name: digits-cpu", "name: digits-cpu\ntracking: not a url", "tracking.uri",
     ["MLflow tracking URI"]),
    ("name: digits-cpu", "name: digits-cpu\ntracking: 'http://'", "tracking.uri", ["no host"]),
    ("name: digits-cpu", "name: digits-cpu\ntracking: {uri: 'http://h:port'}", "tracking.uri",
     ["port"]),
    ("name: digits-cpu", "name: digits-cpu\n[a, b]: c", None, ["found a list used as a key"]),
    ("name: digits-cpu", "name: digits-cpu\n{a: 1}: c", None, ["found a mapping used as a key"]),
    ("name: digits-cpu", "name: digits-cpu\nx: &r [*r]", "x[0]", ["contains itself"]),
    ("name: digits-cpu", "name: digits-cpu\nx: &r {a: 1, <<: *r}", "x", ["merges itself"]),
    ("name: digits-cpu", "name: digits-cpu\n1: x", "1", ["unknown key 1"]),
    ("name: digits-cpu", "name: 2001-13-45", "name", ["month must be in 1..12"]),
    ("name: digits-cpu", "name: !!python/object:os.system x", None, ["tag"]),
    ("preset: cpu-inference ", "preset: [a]", "search_space.preset", ["name of a preset"]),
])
def test_each_malformed_field_is_a_located_error(write_job, old, new, path, words):
    assert old in QUICKSTART
    text = QUICKSTART.replace(old, new, 1)
    err = _refused(write_job, text, path, *words)
    changed = new.splitlines()[-1].strip()
    if changed.split(":")[0] not in ("runtime", "[a, b]", "{a"):
        assert err.line == _line_of(err_path(err), changed.split("{")[0].strip()), str(err)


def err_path(err: SpecError):
    from pathlib import Path

    return Path(err.file)


@pytest.mark.parametrize(("raw", "line", "words"), [
    ("name: digits-cpu\n".encode("utf-16"), 1, ["UTF-16", "byte-order mark"]),
    ("name: digits-cpu\n".encode("utf-32"), 1, ["UTF-32"]),
    (QUICKSTART.replace("description: latency", "description: lat\u00e9ncy").encode("latin-1"), 4,
     ["0xe9", "not valid UTF-8"]),
    (QUICKSTART.encode().replace(b"agent:", b"agent:\0"), AGENT_LINE, ["NUL byte"]),
    (QUICKSTART.encode().replace(b"agent:", b"agent: \x07"), AGENT_LINE, ["U+0007", "control"]),
])
def test_encoding_problems_are_located(write_job, raw, line, words):
    err = _refused(write_job, raw, None, *words)
    assert err.line == line


def test_a_utf8_byte_order_mark_is_accepted(write_job):
    p = write_job("")
    p.write_bytes(b"\xef\xbb\xbf" + QUICKSTART.encode())
    assert load_job(p).name == "digits-cpu"


def test_alias_bombs_and_deep_nesting_fail_fast(write_job):
    import time

    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = QUICKSTART + "\n".join(levels) + "\n"
    t0 = time.monotonic()
    err = _refused(write_job, bomb, "a4", "alias-expansion bomb", line_text="a4: &a4")
    assert time.monotonic() - t0 < 10
    deep = QUICKSTART + "x: " + "[" * 5000 + "]" * 5000 + "\n"
    err = _refused(write_job, deep, None, "nested more than")
    assert err.line == _line_of(err_path(err), "x: [[[")
    assert time.monotonic() - t0 < 20


def test_a_file_too_large_or_not_a_file_is_refused(write_job, tmp_path):
    from autotune.core.yamlsrc import MAX_BYTES

    _refused(write_job, QUICKSTART + "#" * MAX_BYTES, None, "larger than")
    with pytest.raises(SpecError, match="not a regular file") as e:
        load_job(tmp_path)
    assert e.value.file == str(tmp_path)


def test_an_override_keeps_the_presets_rules_unless_it_replaces_them(write_job):
    base = QUICKSTART.replace(OVERRIDE, "quantization: {choices: [fp32, int8_static]}")
    space = load_job(write_job(base)).space
    rules = space["quantization"].invalid
    assert [r.values for r in rules] == [("int8_dynamic",), ("int8_static",)]
    assert space.invalid_reason({"device": "cpu", "runtime": "torch",
                                 "quantization": "int8_static"})
    assert space["quantization"].description == "weight/activation precision"
    # list form keeps them too; 'when' kept on a conditional parameter
    space = load_job(write_job(QUICKSTART.replace(
        OVERRIDE, "quantization: [fp32, int8_static]\n    graph_optimization: [all]"))).space
    assert len(space["quantization"].invalid) == 2
    assert dict(space["graph_optimization"].when) == {"runtime": ("onnxruntime",)}
    # explicit replacement or removal
    space = load_job(write_job(QUICKSTART.replace(
        OVERRIDE, "quantization: {choices: [fp32, int8_dynamic], invalid: []}\n"
                  "    graph_optimization: {choices: [all], when: null}"))).space
    assert space["quantization"].invalid == () and not space["graph_optimization"].when


def test_validate_prints_the_effective_rules(write_job):
    from click.testing import CliRunner

    from autotune.cli import main

    path = write_job(QUICKSTART.replace(
        OVERRIDE, "quantization: {choices: [fp32, int8_static]}\n"
                  "    graph_optimization: {choices: [all], when: {runtime: onnxruntime}}"))
    res = CliRunner().invoke(main, ["validate", "--import-timeout", "0", str(path)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert ("invalid int8_static when runtime=torch (static int8 is implemented for ONNX "
            "Runtime)   [preset (kept by the override)]") in out
    assert "when runtime=onnxruntime   [override]" in out
    assert "when quantization=int8_static   [preset]" in out
    from autotune.job.check import check_job

    added = check_job(write_job(QUICKSTART.replace(OVERRIDE, "execution_mode: [sequential]")),
                      import_timeout=0)
    assert added.rules_of("execution_mode").origin == "override"
    assert added.rules_of("batch_size").origin == "preset"


def _custom_job(tmp_path, ref: str, module: str | None = None, body: str = "") -> object:
    if module:
        (tmp_path / f"{module}.py").write_text(body)
    p = tmp_path / "job.yaml"
    p.write_text(f"name: t\nobjective: {ref}\nsearch_space:\n  parameters:\n"
                 "    x: {low: 0.0, high: 1.0}\nobjectives:\n  - {metric: a, direction: minimize}\n")
    return p


@pytest.mark.parametrize(("module", "body", "ref", "words"), [
    (None, "", "nosuchmodule_xyz:f", ["cannot import module 'nosuchmodule_xyz'"]),
    ("noattr", "g = 1\n", "noattr:f", ["has no attribute 'f'"]),
    ("raising", "import os\nraise RuntimeError('boom')\n", "raising:f",
     ["raised RuntimeError", "raising.py:2", "boom"]),
    ("needsdep", "import nonexistent_dep_xyz\n", "needsdep:f",
     ["ModuleNotFoundError", "nonexistent_dep_xyz"]),
    ("exiting", "import sys\nsys.exit(3)\n", "exiting:f", ["SystemExit"]),
    ("crashing", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "crashing:f",
     ["ended the process", "SIGKILL"]),
    ("hanging", "import time\ntime.sleep(600)\n", "hanging:f", ["did not finish within 3 s"]),
])
def test_validate_imports_references_in_a_child_with_a_time_limit(tmp_path, module, body, ref,
                                                                   words):
    import time

    from autotune.job.check import check_job

    path = _custom_job(tmp_path, ref, module, body)
    t0 = time.monotonic()
    with pytest.raises(SpecError) as e:
        check_job(path, import_timeout=3)
    assert time.monotonic() - t0 < 30
    err = e.value
    assert (err.file, err.line, err.path) == (str(path), 2, "objective"), str(err)
    for w in words:
        assert w in str(err), str(err)
    assert "Traceback" not in str(err)


def test_validate_import_check_passes_and_reports_each_reference(tmp_path):
    from autotune.job.check import check_job

    path = _custom_job(tmp_path, "fine:f", "fine",
                       "import threading, time\n"
                       "threading.Thread(target=time.sleep, args=(600,)).start()\n"
                       "def f(config):\n    return {'a': 1.0}\n")
    checked = check_job(path, import_timeout=30)
    assert [(i.field, i.ref) for i in checked.imports] == [("objective", "fine:f")]
    assert checked.rules_of("x").origin == "job"
    assert check_job(path, import_timeout=0).imports == ()


def test_errors_stay_one_bounded_paragraph(write_job):
    huge = "x" * 50_000
    err = _refused(write_job, QUICKSTART.replace("name: digits-cpu", f'name: "a\\nb{huge}"'),
                   "name", "expected text matching the pattern")
    assert len(str(err)) < 4000 and "\n" not in str(err)
    err = _refused(write_job, QUICKSTART + f"storage: 'x{huge}'\n", "storage", "database URL")
    assert len(str(err)) < 4000
    err = _refused(write_job, QUICKSTART.replace("metric: accuracy", 'metric: "a\\u2028b"'),
                   "evaluation.metric", "\\u2028")
    assert "\u2028" not in str(err)


def test_reference_point_names_the_objectives(write_job):
    _refused(write_job, QUICKSTART + "report: {reference: {latency_p95_ms: 10, acuracy: 0.5, "
                                     "model_size_mb: 1}}\n",
             "report.reference.acuracy", "not an objective", "latency_p95_ms, accuracy")
    _refused(write_job, QUICKSTART + "report: {reference: {latency_p95_ms: 10}}\n",
             "report.reference", "no value for the objective(s) accuracy, model_size_mb")
    ok = load_job(write_job(QUICKSTART + "report: {reference: {latency_p95_ms: 10, "
                                         "accuracy: 0.5, model_size_mb: 1}}\n"))
    assert ok.report.reference == {"latency_p95_ms": 10.0, "accuracy": 0.5, "model_size_mb": 1.0}


def test_validate_checks_that_named_files_exist(write_job):
    from autotune.job.check import check_job

    text = QUICKSTART.replace("factory: digits_model:build", "onnx: missing.onnx")
    p = write_job(text)
    with pytest.raises(SpecError, match="no file at") as e:
        check_job(p, import_timeout=0)
    assert (e.value.path, e.value.line) == ("model.onnx", _line_of(p, "onnx: missing.onnx"))
    (p.parent / "missing.onnx").write_bytes(b"x")
    assert check_job(p, import_timeout=0).job.model.onnx == "missing.onnx"
