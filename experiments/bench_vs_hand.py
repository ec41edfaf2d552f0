"""Does autotune ship something better than a hand-written int8?  ``python experiments/bench_vs_hand.py``

The model: a BERT-family sentence encoder (``experiments/bert_model.py``: 6 layers, hidden 384,
12 heads, intermediate 1536, WordPiece vocabulary of 8,192, trained for 2 minutes on generated
text), batch 1, sequence 128 (padded), 2 threads.  Quality: cosine of mean-pooled embeddings
against the unmodified model, constraint mean >= 0.99.

Steps (each printed as it runs):

1. write the tuning job ``bench-vs-hand.yaml`` as a user would (``experiments/bert-hf.yaml``: a
   ``model: {huggingface: bert, task: feature-extraction}`` job) into a work folder, beside
   ``bert/`` (a link to the saved model) and ``texts.txt`` (96 held-out sentences), and run
   ``autotune run`` on it (a time budget, 10 minutes by
   default); ``--load`` keeps one core busy with another process *while tuning*, as on a shared
   machine, and stops it before the comparison;
2. ``autotune export`` the pick (``--pick``, default the fastest feasible trial) into a bundle;
3. in ONE process, interleaved rounds, ``--runs`` times (3): torch fp32 eager, ONNX Runtime fp32
   of a plain ``torch.onnx.export``, the hand one-liner
   ``quantize_dynamic(per_channel=True, weight_type=QInt8)`` on that export, and the bundle loaded
   by ``autotune.deploy.load``.  Each candidate is timed as the tuner times a configuration
   (``autotune.harness.stats.alternate`` with the job's measurement settings: every round measures
   each candidate until its median is stable, the order rotating), so the four are measured alike
   and the bundle is measured as its manifest's figures were.  Each run gives a p50 per candidate
   (median over rounds) and its ratio to the hand int8; after each run the bundle is also measured
   alone in a fresh process.

With ``--load`` the tuning's own warning applies (its figures were measured on busy cores): once
the load is gone the benchmark runs ``autotune confirm`` (the side-by-side re-measurement, now on
quiet cores) before exporting, as the warning tells a user to.

It prints per run and as the median over runs: p50 latency, speed-up over the hand int8 and over
torch fp32, cosine fidelity against torch fp32, and whether the bundle's re-measured p50 (side by
side, and alone in a fresh process) lies inside the spread its manifest states.  The tuning run's
own counters are printed too: duplicate measurements, invalid proposals counted against the
budget, and which trials came first.

``--skip-tune DIR`` reuses a finished work folder (job, study and bundle) to repeat step 3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SEQ = 128
THREADS = 2


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _autotune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from autotune.cli import main; main()", *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)


def _busy_core() -> subprocess.Popen[bytes]:
    """Another process keeping one core busy (a tight loop), as on a shared machine."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def tune(work: Path, minutes: float, load: bool, pick: str) -> Path:
    import bert_model

    job_src = HERE / "bert-hf.yaml"
    job = work / "bench-vs-hand.yaml"
    text = job_src.read_text().replace("timeout: 10m", f"timeout: {int(minutes * 60)}s")
    job.write_text(text)
    (work / "bert").symlink_to(bert_model.folder())
    (work / "texts.txt").write_text("\n".join(bert_model.texts(96)) + "\n")
    hog = _busy_core() if load else None
    try:
        _say(f"tuning {job} for at most {minutes:g} min" + (" with one core kept busy" if load else ""))
        t0 = time.perf_counter()
        res = _autotune("run", str(job), "--quiet", cwd=work)
        _say(f"tuning finished in {time.perf_counter() - t0:.0f} s (exit {res.returncode})")
        if res.returncode != 0:
            print(res.stdout[-3000:], res.stderr[-3000:])
            raise SystemExit("tuning failed")
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if load:
        _say("load stopped; `autotune confirm` re-measures the leading trials on the quiet cores")
        res = _autotune("confirm", str(job), cwd=work)
        print(res.stdout[-2000:])
        if res.returncode != 0:
            print(res.stderr[-3000:])
            raise SystemExit("confirm failed")
    out = work / "bundle"
    res = _autotune("export", str(job), "--pick", pick, "--out", str(out), "--no-register", cwd=work)
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:])
        raise SystemExit("export failed")
    _say(f"exported {pick} to {out}")
    return out


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
    n_portfolio = sum(s.startswith("portfolio") for s in sources)
    return {"trials": len(trials), "measured": len(measured),
            "duplicate_measurements": len(keys) - len(set(keys)),
            # invalid proposals are recorded as PRUNED trials, outside the budget
            "invalid_recorded": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "invalid_counted": sum(bool(t.user_attrs.get("invalid")) for t in trials
                                   if t.state != optuna.trial.TrialState.PRUNED),
            "reproposals_answered": sum((study.user_attrs.get("reproposed") or {}).values()),
            "portfolio_first": n_portfolio > 0 and all(
                s.startswith("portfolio") for s in sources[:n_portfolio]),
            "first_trials": [f"{t.number}: {t.params.get('runtime')} "
                             f"{t.params.get('quantization')} ({sources[i]})"
                             for i, t in enumerate(trials[:4])]}


def candidates(bundle: Path, model_dir: Path) -> dict[str, Any]:
    """name -> (predict(feeds) -> np.ndarray) for the four contenders, plus the feeds."""
    import bert_model
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from autotune.deploy import load

    torch.set_num_threads(THREADS)
    module, example = bert_model.build(seq_len=SEQ)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    inputs, _ = bert_model.validation_data(seq_len=SEQ, n=32)
    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-hand-"))
    fp32 = tmp / "model.onnx"
    torch.onnx.export(module, tuple(example), str(fp32), input_names=names,
                      output_names=["embedding"], dynamic_axes={n: {0: "batch"} for n in names},
                      dynamo=False)
    hand = tmp / "model.int8.onnx"
    quantize_dynamic(str(fp32), str(hand), per_channel=True, weight_type=QuantType.QInt8)

    def ort_session(path: Path) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, dict(zip(names, feeds, strict=True)))[0]

    def torch_fp32(feeds: list[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return module(*[torch.from_numpy(x) for x in feeds]).numpy()

    predictor = load(bundle, check_hardware=False)
    bundle_names = [i.name for i in predictor.inputs]
    return {
        "feeds": inputs,
        "torch fp32": torch_fp32,
        "ORT fp32": ort_session(fp32),
        "hand int8": ort_session(hand),
        # the bundle takes the inputs its model declares, by name (a tokenizer that returns no
        # token_type_ids gives a model without that input)
        "autotune bundle": lambda feeds: np.asarray(predictor.predict(
            {n: feeds[names.index(n)] for n in bundle_names})),
        "_predictor": predictor,
    }


#: how each candidate is timed: the job's own ``measurement:`` settings (experiments/bert-hf.yaml),
#: so the bundle is re-measured the way its manifest's figures were measured
MEASURE = {"warmup": 5, "min_repeats": 30, "target_ci": 0.03, "max_time_s": 2.0}


def compare(cands: dict[str, Any], rounds: int) -> dict[str, Any]:
    """p50 (ms) per candidate over interleaved rounds (batch 1) and cosine fidelity.

    Timed with the harness's own :func:`autotune.harness.stats.alternate`: every round measures
    each candidate once (warm-up, then timed calls until its median is stable or 2 s pass), the
    order rotating between rounds, on one fixed sentence -- as the tuner and its confirmation
    step time a configuration.  A candidate's p50 is the median of its per-round p50s."""
    from autotune.harness.stats import alternate

    feeds = cands["feeds"]
    fns = {k: v for k, v in cands.items() if not k.startswith("_") and k != "feeds"}
    one = [x[:1] for x in feeds]
    per_round = alternate({k: (lambda f: lambda: f(one))(fn) for k, fn in fns.items()}, rounds,
                          **MEASURE)
    ref = np.concatenate([fns["torch fp32"]([x[i:i + 1] for x in feeds]) for i in range(len(feeds[0]))])
    out: dict[str, Any] = {}
    for name, fn in fns.items():
        got = np.concatenate([np.asarray(fn([x[i:i + 1] for x in feeds]), dtype=np.float32)
                              for i in range(len(feeds[0]))])
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        p50s = [s.p50_ms for s in per_round[name]]
        out[name] = {"p50_ms": float(np.median(p50s)), "cosine": float(cos.mean()),
                     "cosine_min": float(cos.min()), "round_p50s": p50s}
    return out


_FRESH = """
import json, sys, numpy as np
from autotune.deploy import load
from autotune.harness.stats import measure
p = load(sys.argv[1], check_hardware=False)
feeds = json.loads(sys.argv[2])
batch = {i.name: np.asarray(feeds[i.name], dtype=np.int64) for i in p.inputs}
print(json.dumps([measure(lambda: p.predict(batch), **json.loads(sys.argv[3])).p50_ms
                  for _ in range(int(sys.argv[4]))]))
"""


def fresh_process_p50(bundle: Path, feeds: list[np.ndarray], rounds: int) -> float:
    """The bundle re-measured alone in a new process (``rounds`` measurements; their median)."""
    names = ["input_ids", "attention_mask", "token_type_ids"]
    one = {n: x[:1].tolist() for n, x in zip(names, feeds, strict=True)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", _FRESH, str(bundle), json.dumps(one),
                          json.dumps(MEASURE), str(rounds)], env=env, text=True,
                         capture_output=True, check=True)
    return float(np.median(json.loads(res.stdout.strip().splitlines()[-1])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="tuning time budget")
    ap.add_argument("--load", action="store_true", help="keep one core busy while tuning")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per run")
    ap.add_argument("--pick", default="min latency_p50_ms")
    ap.add_argument("--skip-tune", type=Path, help="reuse this finished work folder")
    args = ap.parse_args()

    import bert_model

    model_dir = bert_model.folder()
    _say(f"model: {model_dir} ({bert_model.training_summary(model_dir)})")
    if args.skip_tune:
        work = args.skip_tune
        bundle = work / "bundle"
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-vs-hand-work-"))
        bundle = tune(work, args.minutes, args.load, args.pick)
    counters = study_counters(work)
    _say(f"tuning study: {json.dumps(counters)}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    _say(f"bundle: {json.dumps(manifest.get('config'))}")
    # what the manifest states: the confirmation's figures (p50 and the spread between its
    # rounds), or -- for a pick that was not confirmed -- the trial's own p50 and its 95 % interval
    expected = manifest.get("expected_latency") or {}
    stated, lo, hi = (expected.get(k) for k in ("p50_ms", "spread_low_ms", "spread_high_ms"))
    _say(f"manifest: p50 {stated} ms, spread [{lo}, {hi}] ms "
         f"(source: {expected.get('source', 'none')})")
    cands = candidates(bundle, model_dir)
    runs, fresh = [], []
    for r in range(args.runs):
        res = compare(cands, args.rounds)
        runs.append(res)
        fresh.append(fresh_process_p50(bundle, cands["feeds"], 3))
        hand = res["hand int8"]["p50_ms"]
        _say(f"run {r + 1}/{args.runs}: " + ", ".join(
            f"{k} {v['p50_ms']:.2f} ms (x{hand / v['p50_ms']:.2f} vs hand, cos {v['cosine']:.4f})"
            for k, v in res.items()) + f"; bundle alone in a fresh process {fresh[-1]:.2f} ms")
    print("\n| candidate | p50 ms (median of runs) | speed-up vs hand int8 | vs torch fp32 "
          "| cosine mean (min) |")
    print("|---|---|---|---|---|")
    for name in runs[0]:
        p50 = statistics.median(r[name]["p50_ms"] for r in runs)
        vs_hand = statistics.median(r["hand int8"]["p50_ms"] / r[name]["p50_ms"] for r in runs)
        vs_t = statistics.median(r["torch fp32"]["p50_ms"] / r[name]["p50_ms"] for r in runs)
        cos = statistics.median(r[name]["cosine"] for r in runs)
        cmin = min(r[name]["cosine_min"] for r in runs)
        print(f"| {name} | {p50:.2f} | {vs_hand:.2f}x | {vs_t:.2f}x | {cos:.4f} ({cmin:.4f}) |")
    per_run = [r["hand int8"]["p50_ms"] / r["autotune bundle"]["p50_ms"] for r in runs]
    print(f"\nbundle vs hand int8 per run: {', '.join(f'{x:.2f}x' for x in per_run)}")

    def within(x: float) -> bool:
        return lo is not None and hi is not None and lo <= x <= hi

    side = [r["autotune bundle"]["p50_ms"] for r in runs]
    print(f"manifest p50 {stated} ms, stated spread [{lo}, {hi}] ms:")
    print(f"  re-measured side by side (this process): {', '.join(f'{x:.2f}' for x in side)} ms, "
          f"inside in {sum(map(within, side))}/{len(side)} runs")
    print(f"  re-measured alone in a fresh process:    {', '.join(f'{x:.2f}' for x in fresh)} ms, "
          f"inside in {sum(map(within, fresh))}/{len(fresh)} runs")


if __name__ == "__main__":
    main()
