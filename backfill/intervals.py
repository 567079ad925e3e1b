"""Interval arithmetic over UTC times, pure: what gap detection computes with.

An interval is `(start, end)`, end exclusive; a finding is `(interval, kinds)`. Nothing here
reads a database or the network, so every rule of detection that is arithmetic is tested on its
own (tests/unit/backfill/test_gaps_math.py).
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from backfill.validation import ceil_minute, floor_minute

MINUTE = timedelta(minutes=1)

Interval = tuple[datetime, datetime]
Finding = tuple[Interval, set[str]]
# one session's coverage: (start, end, symbols of its shard | None = every symbol)
SessionSpan = tuple[datetime, datetime, "list[str] | None"]


def merge_intervals(intervals: Iterable[Interval], tolerance: timedelta = timedelta(0)) -> list[Interval]:
    out: list[list[datetime]] = []
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if out and s <= out[-1][1] + tolerance:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def subtract_intervals(base: Iterable[Interval], minus: Iterable[Interval]) -> list[Interval]:
    minus = merge_intervals(minus)
    out = []
    for s, e in merge_intervals(base):
        cur = s
        for ms, me in minus:
            if me <= cur or ms >= e:
                continue
            if ms > cur:
                out.append((cur, ms))
            cur = max(cur, me)
            if cur >= e:
                break
        if cur < e:
            out.append((cur, e))
    return out


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Overlapping or touching findings become one, with the union of their kinds."""
    out: list[tuple[list[datetime], set[str]]] = []
    for (s, e), kinds in sorted(findings, key=lambda f: f[0]):
        if out and s <= out[-1][0][1]:
            out[-1][0][1] = max(out[-1][0][1], e)
            out[-1][1].update(kinds)
        else:
            out.append(([s, e], set(kinds)))
    return [((s, e), kinds) for (s, e), kinds in out]


def widen_to_minutes(intervals: Iterable[Interval]) -> list[Interval]:
    return merge_intervals((floor_minute(s), ceil_minute(e)) for s, e in intervals)


def minutes_to_intervals(minutes: Iterable[datetime], tolerance: timedelta = timedelta(0)) -> list[Interval]:
    return merge_intervals(((m, m + MINUTE) for m in minutes), tolerance)


def clip(intervals: Iterable[Interval], lo: datetime, hi: datetime) -> list[Interval]:
    return [(max(s, lo), min(e, hi)) for s, e in intervals if min(e, hi) > max(s, lo)]


def detection_horizon(now: datetime, lookback: timedelta, settle: timedelta) -> Interval:
    """[lo, hi) in whole minutes: from the minute `lookback` before now to the start of the minute
    `settle` before now. It does not depend on when the stream began, so two runs less than
    lookback - settle apart see overlapping horizons and no minute falls between them."""
    return floor_minute(now - lookback), floor_minute(now - settle)


def uncovered_minutes(lo: datetime, hi: datetime, coverage: Iterable[Interval]) -> list[Interval]:
    """The whole minutes of [lo, hi) that the sessions' `coverage` does not fully cover: time
    before the first session, between sessions and after the last, each partly covered minute at
    their edges included."""
    return clip(widen_to_minutes(subtract_intervals([(lo, hi)], coverage)), lo, hi)


def silences(silent_minutes: Iterable[datetime], lo: datetime, hi: datetime) -> list[Interval]:
    """Runs of silent minutes, widened by one minute on each side (the minutes at a silence's
    edges were only partly heard), within [lo, hi)."""
    return clip(merge_intervals((s - MINUTE, e + MINUTE) for s, e in minutes_to_intervals(silent_minutes)), lo, hi)


def label_spans(uncovered: list[Interval], silent: list[Interval]) -> list[Finding]:
    """The merged uncovered and silent time, each span labelled with the kinds it holds."""
    out = []
    for s, e in merge_intervals(uncovered + silent):
        kinds = set()
        if any(us < e and ue > s for us, ue in uncovered):
            kinds.add("uncovered")
        if any(ss < e and se > s for ss, se in silent):
            kinds.add("silence")
        out.append(((s, e), kinds))
    return out


def scoped_uncovered(sessions: list[SessionSpan], lo: datetime, hi: datetime,
                     configured: Iterable[str] = ()) -> dict[str, list[Interval]]:
    """Per-symbol uncovered time in [lo, hi) left by sharded sessions.

    sessions: (start, end, symbols) coverage of each session; symbols None = unsharded (covers
    every symbol). Only when some session in the window is sharded: each symbol of a shard, and
    each `configured` symbol, is covered by the unsharded sessions and the sessions whose
    symbols hold it. Horizon: [lo, hi) for a configured symbol, else from the first start to the
    last end of its sessions. Returned intervals are widened to whole minutes."""
    scoped = [(s, e, syms) for s, e, syms in sessions if syms is not None]
    if not scoped:
        return {}
    whole = [(s, e) for s, e, syms in sessions if syms is None]
    own: dict[str, list[Interval]] = {}
    for s, e, syms in scoped:
        for sym in syms:
            own.setdefault(sym, []).append((s, e))
    configured = set(configured)
    out: dict[str, list[Interval]] = {}
    for sym in sorted(set(own) | configured):
        mine = own.get(sym, [])
        if sym in configured:
            start, end = lo, hi
        else:
            start, end = max(lo, min(s for s, _ in mine)), min(hi, max(e for _, e in mine))
        if end <= start:
            continue
        gaps = clip(widen_to_minutes(subtract_intervals([(start, end)], whole + mine)), lo, hi)
        if gaps:
            out[sym] = gaps
    return out
