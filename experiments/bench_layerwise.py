"""Per-layer compression found by RL on ``envs.LayerWiseEnv`` (AMC/HAQ-style), against random
per-layer policies and the best uniform policy, at the same number of real evaluations.

    python experiments/bench_layerwise.py                     # transformer, 60 evaluations, 3 seeds
    python experiments/bench_layerwise.py --algorithms ppo a2c dqn random --evaluations 100

The model is the 2-layer transformer of ``transformer-cpu.yaml`` (7 decidable layers: per encoder
layer attention's out_proj, linear1, linear2; and the head).  Each layer chooses fp32 or int8
(torchao dynamic int8; out_proj stays fp32) and an L1 pruning ratio of 0, 50, 90 or 98 %: 8
actions, 8^7 ≈ 2.1 M policies.  A policy is scored by the environment's reward, accuracy on
held-out sequences minus ``trade_off`` x the weight-size ratio, with a penalty of 10 per unit of
accuracy below ``baseline - max_drop``.  An evaluation is one distinct policy applied to the model
and scored (about a second here); a policy proposed again costs nothing and is not counted.

Printed: for each algorithm, the best reward found after 25 %, 50 % and 100 % of the evaluations
(median [min, max] over seeds) and the accuracy and size of the final best policy; and the best
of the 8 uniform policies (every layer the same action), which costs 8 evaluations.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

RESULTS = HERE / "results" / "bench_layerwise.csv"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algorithms", nargs="*", default=["ppo", "random"])
    ap.add_argument("--evaluations", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=256, help="held-out sequences per evaluation")
    ap.add_argument("--trade-off", type=float, default=0.5)
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import torch
    import transformer_model as tm

    from autotune.envs.layer_wise import LayerAction, LayerWiseEnv, search_policies

    torch.set_num_threads(1)
    model, example = tm.build()
    x, y = tm.validation_data(n=args.samples)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def accuracy(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float((m(xt).argmax(1) == yt).float().mean())

    base = accuracy(model)
    actions = tuple(LayerAction(p, r) for p in ("fp32", "int8") for r in (0.0, 0.5, 0.9, 0.98))

    def make_env() -> LayerWiseEnv:
        return LayerWiseEnv(model, accuracy, actions=actions, example=example,
                            trade_off=args.trade_off, min_quality=base - args.max_drop)

    env = make_env()
    print(f"baseline accuracy {base:.4f}; {len(env.layers)} layers x {len(actions)} actions; "
          f"reward = accuracy - {args.trade_off} x size ratio (fp32 dense = {base - args.trade_off:.3f})",
          flush=True)
    uniform = []
    for a in range(len(actions)):
        env.reset(seed=0)
        for _ in env.layers:
            env.step(a)
        uniform.append(env.evaluated[-1])
    best_uniform = max(uniform, key=lambda r: r.reward)

    rows = []
    marks = sorted({max(1, args.evaluations // 4), max(1, args.evaluations // 2), args.evaluations})
    for algo in args.algorithms:
        for seed in range(args.seeds):
            env = make_env()
            t0 = time.monotonic()
            best = search_policies(env, args.evaluations, algorithm=algo, seed=seed)
            spent = time.monotonic() - t0
            curve = [max(r.reward for r in env.evaluated[:k]) for k in marks]
            rows.append({"algorithm": algo, "seed": seed, "evaluations": len(env.evaluated),
                         **{f"best@{k}": round(v, 5) for k, v in zip(marks, curve, strict=True)},
                         "accuracy": round(best.quality, 5), "size_ratio": round(best.cost, 5),
                         "policy": " ".join(f"{a.precision}/{a.prune:g}" for a in best.policy),
                         "seconds": round(spent, 1)})
            print(f"  {algo:<7} seed {seed}: best reward {best.reward:.4f} (accuracy "
                  f"{best.quality:.4f}, size {best.cost:.3f}) after {len(env.evaluated)} "
                  f"evaluations, {spent:.0f}s", flush=True)

    print(f"\nbest reward found (median [min, max] over {args.seeds} seeds)")
    print(f"{'algorithm':<10}" + "".join(f"{'@' + str(k) + ' evals':>24}" for k in marks)
          + f"{'accuracy':>10}{'size':>8}")
    for algo in args.algorithms:
        mine = [r for r in rows if r["algorithm"] == algo]
        cells = ""
        for k in marks:
            v = [r[f"best@{k}"] for r in mine]
            cells += f"{statistics.median(v):>8.4f} [{min(v):.4f}, {max(v):.4f}]"
        acc = statistics.median(r["accuracy"] for r in mine)
        size = statistics.median(r["size_ratio"] for r in mine)
        print(f"{algo:<10}{cells}{acc:>10.4f}{size:>8.3f}")
    print(f"{'uniform':<10}{'best of 8 uniform policies: ':>48}{best_uniform.reward:>8.4f}"
          f"{best_uniform.quality:>10.4f}{best_uniform.cost:>8.3f}  "
          f"({best_uniform.policy[0].precision}/{best_uniform.policy[0].prune:g} everywhere)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
