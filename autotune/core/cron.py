"""When to re-tune: a 5-field cron expression or a fixed interval (``6h``, ``30m``, ``1d``).

Cron fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec), day of week
(0-7 or sun-sat; 0 and 7 are Sunday).  Each field: ``*``, a number, a range ``a-b``, a list
``a,b``, a step ``*/n`` or ``a-b/n``.  As in Vixie cron, when both day of month and day of week are
restricted, a day matching either one fires.  Macros: ``@hourly``, ``@daily``, ``@weekly``,
``@monthly``, ``@yearly``.  Times are in the zone of the datetime given (local time by default).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

_MONTHS = {m: i + 1 for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *",
           "@annually": "0 0 1 1 *"}
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
           ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")


class ScheduleError(ValueError):
    """A schedule that cannot be parsed; the message says what was expected."""


def _value(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> int:
    t = text.lower()
    if t in names:
        return names[t]
    if not t.isdigit():
        raise ScheduleError(f"{name}: expected a number in {lo}-{hi}, found '{text}'")
    v = int(t)
    if not lo <= v <= hi:
        raise ScheduleError(f"{name}: {v} is outside {lo}-{hi}")
    return v


def _field(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"{name}: empty list item in '{text}'")
        base, _, step_s = part.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) == 0:
                raise ScheduleError(f"{name}: the step must be a positive number, found '{step_s}'")
            step = int(step_s)
        if base == "*":
            a, b = lo, hi
        elif "-" in base:
            x, _, y = base.partition("-")
            a, b = _value(x, name, lo, hi, names), _value(y, name, lo, hi, names)
            if a > b:
                raise ScheduleError(f"{name}: the range '{base}' runs backwards")
        else:
            a = _value(base, name, lo, hi, names)
            b = hi if step_s else a
        out.update(range(a, b + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    dom_any: bool
    dow_any: bool

    def matches(self, t: dt.datetime) -> bool:
        return (t.minute in self.minutes and t.hour in self.hours and t.month in self.months
                and self._day_ok(t))

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first matching minute strictly after ``t``."""
        c = t.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        limit = c + dt.timedelta(days=366 * 8)
        while c < limit:
            if c.month not in self.months:
                c = (c.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
            elif not self._day_ok(c):
                c = c.replace(hour=0, minute=0) + dt.timedelta(days=1)
            elif c.hour not in self.hours:
                c = c.replace(minute=0) + dt.timedelta(hours=1)
            elif c.minute not in self.minutes:
                c += dt.timedelta(minutes=1)
            else:
                return c
        raise ScheduleError(f"'{self.text}' never fires (e.g. 30 February)")

    def _day_ok(self, t: dt.datetime) -> bool:
        dom = t.day in self.days
        dow = (t.isoweekday() % 7) in self.weekdays
        return (dom and dow) if (self.dom_any or self.dow_any) else (dom or dow)


@dataclass(frozen=True)
class Interval:
    text: str
    seconds: float

    def next_after(self, t: dt.datetime) -> dt.datetime:
        return t + dt.timedelta(seconds=self.seconds)


Schedule = Cron | Interval


def parse_cron(text: str) -> Cron:
    expr = _MACROS.get(text.strip().lower(), text.strip())
    parts = expr.split()
    if len(parts) != 5:
        raise ScheduleError(
            f"expected 5 cron fields (minute hour day-of-month month day-of-week) or an interval "
            f"like '6h', found {len(parts)} field(s) in '{text}'")
    sets = [_field(p, n, lo, hi, names) for p, (n, lo, hi, names) in zip(parts, _FIELDS,
                                                                           strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    return Cron(text=text, minutes=sets[0], hours=sets[1], days=sets[2], months=sets[3],
                weekdays=weekdays, dom_any=parts[2] == "*", dow_any=parts[4] == "*")


def parse_schedule(text: str) -> Schedule:
    """``'6h'`` / ``'90m'`` / ``'1d'`` / ``'30s'`` → :class:`Interval`; otherwise cron."""
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError(f"expected a cron expression or an interval like '6h', found {text!r}")
    m = _INTERVAL.match(text)
    if m:
        seconds = float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
        if seconds <= 0:
            raise ScheduleError(f"the interval must be positive, found '{text}'")
        return Interval(text, seconds)
    return parse_cron(text)
