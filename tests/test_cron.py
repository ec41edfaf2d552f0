"""The 5-field cron parser and intervals, checked against hand-computed times and brute force."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.core.cron import Cron, Interval, ScheduleError, parse_cron, parse_schedule

T0 = dt.datetime(2026, 11, 21, 18, 7, 30)  # a Saturday


@pytest.mark.parametrize(("expr", "expected"), [
    ("*/15 * * * *", dt.datetime(2026, 11, 21, 18, 15)),
    ("0 * * * *", dt.datetime(2026, 11, 21, 19, 0)),
    ("30 2 * * *", dt.datetime(2026, 11, 22, 2, 30)),
    ("0 9 * * mon-fri", dt.datetime(2026, 11, 23, 9, 0)),  # Saturday -> Monday
    ("0 0 1 * *", dt.datetime(2026, 12, 1, 0, 0)),
    ("0 0 1 jan *", dt.datetime(2027, 1, 1, 0, 0)),
    ("0 12 29 2 *", dt.datetime(2028, 2, 29, 12, 0)),  # next leap day
    ("0 0 * * 7", dt.datetime(2026, 11, 22, 0, 0)),  # 7 is Sunday too
    ("0 0 13 * 5", dt.datetime(2026, 11, 27, 0, 0)),  # dom OR dow: Friday 27th comes first
    ("5,10 18 * * *", dt.datetime(2026, 11, 21, 18, 10)),
    ("0-10/5 19 * * *", dt.datetime(2026, 11, 21, 19, 0)),
    ("@daily", dt.datetime(2026, 11, 22, 0, 0)),
    ("@weekly", dt.datetime(2026, 11, 22, 0, 0)),
])
def test_next_after(expr: str, expected: dt.datetime) -> None:
    assert parse_cron(expr).next_after(T0) == expected


def test_next_after_is_strictly_later() -> None:
    at = dt.datetime(2026, 11, 21, 18, 15)
    assert parse_cron("*/15 * * * *").next_after(at) == dt.datetime(2026, 11, 21, 18, 30)


@pytest.mark.parametrize(("expr", "needle"), [
    ("* * * *", "5 cron fields"),
    ("60 * * * *", "minute: 60 is outside 0-59"),
    ("* 24 * * *", "hour: 24"),
    ("* * 0 * *", "day of month: 0"),
    ("* * * 13 *", "month: 13"),
    ("* * * * 8", "day of week: 8"),
    ("*/0 * * * *", "step must be a positive"),
    ("5-1 * * * *", "runs backwards"),
    ("a * * * *", "expected a number"),
    ("1,,2 * * * *", "empty list item"),
])
def test_errors_say_what_is_wrong(expr: str, needle: str) -> None:
    with pytest.raises(ScheduleError, match=needle):
        parse_cron(expr)


def test_never_firing_expression() -> None:
    with pytest.raises(ScheduleError, match="never fires"):
        parse_cron("0 0 30 2 *").next_after(T0)


def test_intervals() -> None:
    s = parse_schedule("6h")
    assert isinstance(s, Interval) and s.seconds == 6 * 3600
    assert parse_schedule("90m").next_after(T0) == T0 + dt.timedelta(minutes=90)
    assert parse_schedule("1.5s").seconds == 1.5
    assert isinstance(parse_schedule("@hourly"), Cron)
    with pytest.raises(ScheduleError):
        parse_schedule("")
    with pytest.raises(ScheduleError):
        parse_schedule("0s")


@settings(max_examples=60, deadline=None)
@given(minute=st.sampled_from(["*", "0", "*/7", "13,47", "5-9"]),
       hour=st.sampled_from(["*", "3", "*/5", "22-23"]),
       dom=st.sampled_from(["*", "1", "15-17", "*/10"]),
       dow=st.sampled_from(["*", "0", "1-5", "sat"]),
       start_min=st.integers(0, 60 * 24 * 40))
def test_matches_brute_force(minute: str, hour: str, dom: str, dow: str, start_min: int) -> None:
    """next_after equals the first minute found by stepping minute by minute through matches()."""
    cron = parse_cron(f"{minute} {hour} {dom} * {dow}")
    start = dt.datetime(2026, 1, 1) + dt.timedelta(minutes=start_min)
    got = cron.next_after(start)
    c = start + dt.timedelta(minutes=1)
    while not cron.matches(c):
        c += dt.timedelta(minutes=1)
    assert got == c
