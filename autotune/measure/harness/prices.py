"""Default prices and the cost of a configuration: latency into dollars per million items."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autotune.measure.harness.fingerprint import Fingerprint

__all__ = ["DEFAULT_PRICES_USD_PER_HOUR", "cost_usd_per_million", "default_price_per_hour"]

#: Default prices in US dollars per hour, used for ``cost_usd_per_million`` when a job sets none.
#:
#: Order-of-magnitude figures in the spirit of 2025–26 on-demand list prices of the large public
#: clouds, rounded: ``cpu-core`` is per vCPU-hour of a general-purpose instance (memory included;
#: e.g. a 2-vCPU instance at about $0.10/h); ``gpu:<model>`` is per GPU-hour of a GPU instance,
#: its share of host CPUs and memory included.  Specialised GPU clouds, reserved capacity and spot
#: prices are often several times cheaper, and prices change: they are defaults for comparing
#: configurations with each other, not quotes.  Jobs override them with their own price.
DEFAULT_PRICES_USD_PER_HOUR: dict[str, float] = {
    "cpu-core": 0.048,
    "gpu:H200": 5.0,
    "gpu:H100": 4.0,
    "gpu:A100": 2.5,
    "gpu:L40S": 1.9,
    "gpu:A10G": 1.0,
    "gpu:L4": 0.8,
    "gpu:T4": 0.5,
    "gpu:default": 2.0,
}


def positive(value: object, name: str, func: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        ok = math.isfinite(float(value)) and float(value) > 0  # type: ignore[arg-type]
    if not ok:
        raise ValueError(
            f"The '{name}' parameter of {func} must be a positive finite number. "
            f"Got {value!r} instead."
        )
    return float(value)  # type: ignore[arg-type]


def positive_int(value: object, name: str, func: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"The '{name}' parameter of {func} must be an int in [1, inf). Got {value!r} instead."
        )
    return value


def _gpu_price(name: str, prices: Mapping[str, float]) -> float:
    upper = name.upper()
    models = sorted(
        (k.split(":", 1)[1] for k in prices if k.startswith("gpu:") and k != "gpu:default"),
        key=len,
        reverse=True,
    )
    for model in models:
        if re.search(rf"(?<![A-Z0-9]){re.escape(model.upper())}(?![A-Z0-9])", upper):
            return float(prices[f"gpu:{model}"])
    return float(prices.get("gpu:default", DEFAULT_PRICES_USD_PER_HOUR["gpu:default"]))


def default_price_per_hour(
    fp: Fingerprint,
    device: str,
    threads: int,
    *,
    prices: Mapping[str, float] | None = None,
) -> float:
    """Price per hour of what a configuration occupies, from ``prices`` (default: the table).

    ``device="cpu"``: ``threads`` × the ``cpu-core`` price.  ``"cuda"`` / ``"cuda:N"`` / ``"gpu"``:
    the per-GPU price of that GPU's model (matched as a word in its name, e.g. ``H100`` in
    ``NVIDIA H100 80GB HBM3``), else ``gpu:default``; the host's share is included in it, so
    ``threads`` does not add to it.
    """
    func = "default_price_per_hour"
    threads = positive_int(threads, "threads", func)
    table = DEFAULT_PRICES_USD_PER_HOUR if prices is None else prices
    if device == "cpu":
        return threads * positive(table.get("cpu-core"), "prices['cpu-core']", func)
    m = re.fullmatch(r"(?:cuda|gpu)(?::(\d+))?", device) if isinstance(device, str) else None
    if m is None:
        raise ValueError(
            f"The 'device' parameter of {func} must be 'cpu', 'cuda', 'cuda:N' or 'gpu'. "
            f"Got {device!r} instead."
        )
    index = int(m.group(1) or 0)
    name = str(fp.gpus[index].get("name", "")) if index < len(fp.gpus) else ""
    return positive(_gpu_price(name, table), "GPU price", func)


def cost_usd_per_million(
    latency_s_per_batch: float, batch_size: int, price_per_hour: float
) -> float:
    """Dollars for one million items: ``price_per_hour / 3600 × latency_s_per_batch / batch_size
    × 1e6`` (the machine fully busy with back-to-back batches)."""
    func = "cost_usd_per_million"
    latency = positive(latency_s_per_batch, "latency_s_per_batch", func)
    batch = positive_int(batch_size, "batch_size", func)
    price = positive(price_per_hour, "price_per_hour", func)
    return price / 3600.0 * (latency / batch) * 1e6
