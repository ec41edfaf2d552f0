"""Constraints written as people write them: ``latency_p95_ms <= 50``, ``accuracy_drop <= 1%``,
``latency_p95_ms <= 80% of baseline``, ``throughput_ips >= 1.5 * baseline``.

A constraint's *violation* follows Optuna's convention: ``<= 0`` is satisfied, ``> 0`` is the
amount by which it is missed (in the metric's units).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Op = Literal["<=", ">=", "<", ">"]

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONSTRAINT = re.compile(r"^\s*(?P<metric>[A-Za-z_]\w*)\s*(?P<op><=|>=|<|>)\s*(?P<rhs>.+?)\s*$")
_RHS = [
    (re.compile(rf"^(?P<n>{_NUM})\s*%\s*of\s+baseline$", re.I), 0.01, True),
    (re.compile(rf"^(?P<n>{_NUM})\s*(?:\*|x)\s*baseline$", re.I), 1.0, True),
    (re.compile(rf"^baseline\s*\*\s*(?P<n>{_NUM})$", re.I), 1.0, True),
    (re.compile(rf"^(?P<n>{_NUM})\s*%$"), 0.01, False),
    (re.compile(rf"^(?P<n>{_NUM})$"), 1.0, False),
]

SYNTAX_HELP = (
    "Write constraints as 'METRIC OP VALUE' with OP one of <=, >=, <, > and VALUE a number "
    "('latency_p95_ms <= 50'), a percentage ('accuracy_drop <= 1%' means 0.01), or relative to the "
    "unmodified baseline ('latency_p95_ms <= 80% of baseline', 'throughput_ips >= 1.5 * baseline')."
)


class ConstraintSyntaxError(ValueError):
    """Raised by :func:`parse_constraint`; the spec loader adds file/line/field to it."""


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: Op
    value: float
    relative: bool  # value multiplies the baseline's measurement of ``metric``
    text: str

    def bound(self, baseline: Mapping[str, float] | None = None) -> float:
        if not self.relative:
            return self.value
        if not baseline or self.metric not in baseline:
            raise KeyError(f"constraint '{self.text}' needs the baseline's {self.metric}")
        return self.value * float(baseline[self.metric])

    def violation(
        self, metrics: Mapping[str, float], baseline: Mapping[str, float] | None = None
    ) -> float:
        """``<= 0`` when satisfied; otherwise how far the metric is on the wrong side."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return math.inf
        bound = self.bound(baseline)
        gap = float(value) - bound if self.op in ("<=", "<") else bound - float(value)
        if self.op in ("<", ">") and gap == 0:
            return 1e-12  # strict inequality: equality is a (tiny) violation
        return gap

    def satisfied(
        self, metrics: Mapping[str, float], baseline: Mapping[str, float] | None = None
    ) -> bool:
        return self.violation(metrics, baseline) <= 0

    def __str__(self) -> str:
        return self.text


def parse_constraint(text: str) -> Constraint:
    m = _CONSTRAINT.match(text)
    if not m:
        raise ConstraintSyntaxError(f"cannot read constraint '{text}'. {SYNTAX_HELP}")
    rhs = m["rhs"]
    for pattern, scale, relative in _RHS:
        r = pattern.match(rhs)
        if r:
            return Constraint(
                metric=m["metric"],
                op=m["op"],  # type: ignore[arg-type]
                value=float(r["n"]) * scale,
                relative=relative,
                text=" ".join(text.split()),
            )
    raise ConstraintSyntaxError(f"cannot read the value '{rhs}' in constraint '{text}'. {SYNTAX_HELP}")
