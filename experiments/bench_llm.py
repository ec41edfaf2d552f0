"""Serving a language model: transformers' ``generate`` as people write it vs the tuned configuration.

Side by side in one run, on the job's model and workload (its prompts, output lengths and
concurrency), measured in interleaved rounds (each round serves the whole workload once with every
configuration, in turn) so that ratios are fair on a busy machine:

(a)  ``generate`` with its defaults, serving one request at a time;
(b)  the same ``generate`` batched by hand at the workload's concurrency (left padding, default
     cache and attention, torch's default threads): the baseline a careful user writes;
(b') (b) with the tuned configuration's thread count, to show what threads alone give;
(c)  the tuned configuration: ``--trial N``, else the feasible trial of the job's study with the
     most output tokens/s.

Every configuration is served by the same engine (autotune.workloads.engine), which streams tokens
from ``generate`` through a stopping criterion to time the first token.  Fidelity: greedy-token
agreement with the unmodified model (one request at a time, fp32) and held-out perplexity ratio.

    python experiments/bench_llm.py experiments/glm-cpu.yaml [--rounds 5] [--trial N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _front(job: Any) -> tuple[list[Any], Any]:
    from autotune.tuner import open_record, pareto_views

    record = open_record(job, create=False)
    views = record.trials()
    return views, pareto_views(views, job)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("job", nargs="?", default=str(Path(__file__).with_name("glm-cpu.yaml")))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--trial", type=int, default=None, help="the tuned trial (default: the "
                    "feasible trial with the most output tokens/s)")
    args = ap.parse_args(argv)

    from autotune.harness.hostlock import measurement_lock
    from autotune.spec import load_job
    from autotune.workloads.generation import (
        GenerationEvaluator,
        agreement,
        perplexity,
        serve_pass,
        summarize,
    )

    job = load_job(args.job)
    views, front = _front(job)
    done = [t for t in views if t.state == "complete"]
    if args.trial is not None:
        tuned = next(t for t in done if t.number == args.trial)
    else:
        feasible = [t for t in done if t.feasible]
        if not feasible:
            print("the job has no feasible trial yet: run it first (autotune run JOB)")
            return 1
        tuned = max(feasible, key=lambda t: t.metrics["output_tokens_per_s"])
    tuned_cfg = {k: v for k, v in tuned.config.items() if k != "runtime"}
    ev = GenerationEvaluator(job)
    wl = ev.workload
    reference = ev.reference()
    threads = tuned_cfg.get("threads")
    configs = {
        "(a) generate, one request at a time": {"max_batch": 1},
        f"(b) generate, hand-batched x{wl.concurrency}": {},
        f"(b') (b) with threads={threads}": {"threads": threads} if threads else None,
        f"(c) tuned (trial {tuned.number})": tuned_cfg,
    }
    engines = {}
    fidelity: dict[str, tuple[float, float]] = {}
    for name, cfg in configs.items():
        if cfg is None:
            continue
        engine, _ = ev.build(cfg)
        engines[name] = engine
        fidelity[name] = (0.0, perplexity(engine.model, wl.held_out_ids) / ev._ref_ppl)
    per: dict[str, list[dict[str, float]]] = {n: [] for n in engines}
    agree: dict[str, list[float]] = {n: [] for n in engines}
    t0 = time.perf_counter()
    with measurement_lock():
        for e in engines.values():  # warm-up
            serve_pass(e, wl, n=wl.concurrency)
        for _ in range(args.rounds):
            for name, e in engines.items():
                p = serve_pass(e, wl)
                per[name].append(summarize([p]))
                agree[name].append(agreement(p.tokens, reference))
    wall = time.perf_counter() - t0

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in per[name])

    b = next(n for n in engines if n.startswith("(b)"))
    c = next(n for n in engines if n.startswith("(c)"))
    print(f"job {job.name}: {len(wl.items)} requests, concurrency {wl.concurrency}, "
          f"{sum(n for _, n in wl.items)} output tokens per pass; {args.rounds} interleaved "
          f"rounds ({wall:.0f} s); medians over rounds\n")
    head = (f"{'configuration':44s} {'tokens/s':>9s} {'vs (b)':>7s} {'TTFT p50':>9s} "
            f"{'TTFT p95':>9s} {'TPOT p50':>9s} {'agree':>6s} {'ppl ratio':>9s}")
    print(head)
    print("-" * len(head))
    for name in engines:
        ratios = [x["output_tokens_per_s"] / y["output_tokens_per_s"]
                  for x, y in zip(per[name], per[b], strict=True)]
        print(f"{name:44s} {med(name, 'output_tokens_per_s'):9.1f} "
              f"{statistics.median(ratios):6.2f}x {med(name, 'ttft_p50_ms'):7.1f}ms "
              f"{med(name, 'ttft_p95_ms'):7.1f}ms {med(name, 'tpot_p50_ms'):7.2f}ms "
              f"{statistics.mean(agree[name]):6.3f} {fidelity[name][1]:9.4f}")
    ratios = [x["output_tokens_per_s"] / y["output_tokens_per_s"]
              for x, y in zip(per[c], per[b], strict=True)]
    print(f"\n(c)/(b) output tokens/s per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"tuned configuration: {tuned_cfg}")
    for text in job.constraints:
        from autotune.constraints import parse_constraint

        con = parse_constraint(text)
        if con.metric in per[c][0]:
            value = med(c, con.metric)
        elif con.metric in ("token_agreement", "quality"):
            value = statistics.mean(agree[c])
        elif con.metric == "perplexity_ratio":
            value = fidelity[c][1]
        else:
            continue
        ok = con.satisfied({con.metric: value}, None)
        print(f"constraint {text}: (c) {value:.3f} -> {'met' if ok else 'NOT met'}")
    print(f"\nPareto front of {job.name} ({len(front)} of {len(done)} complete trials):")
    names = [m for m, _ in job.objective_pairs]
    print("  trial  " + "  ".join(f"{n:>20s}" for n in names) + "  configuration")
    for t in sorted(front, key=lambda t: t.number):
        cfg = ", ".join(f"{k}={v}" for k, v in t.config.items() if k != "runtime")
        print(f"  {t.number:5d}  " + "  ".join(f"{t.metrics.get(n, float('nan')):20.3f}"
                                              for n in names) + f"  {cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
