"""Which minutes a reconciliation run takes on: backfill.reconcile.plan_window (pure)."""
from datetime import datetime, timedelta, timezone

import pytest

from backfill.reconcile import ReconcileResult, plan_window

UTC = timezone.utc
M = timedelta(minutes=1)


def t(h, m, s=0):
    return datetime(2030, 1, 1, h, m, s, tzinfo=UTC)


def plan(now, until=None, first=None, settle=timedelta(seconds=120), lookback=timedelta(hours=6), max_minutes=360):
    return plan_window(now, reconciled_until=until, first_session=first, settle=settle, lookback=lookback,
                       max_minutes=max_minutes)


def test_first_run_starts_at_the_minute_the_first_session_began_partly_seen_minute_included():
    # stream began 20:03:24; at 20:10:30 the minutes closed at least 120 s ago are those up to
    # 20:07 (it closed at 20:08:00, 150 s ago; 20:08 closed 90 s ago)
    assert plan(t(20, 10, 30), first=t(20, 3, 24)) == (t(20, 3), t(20, 8))


def test_first_run_never_reaches_further_back_than_the_lookback():
    assert plan(t(20, 10, 30), first=t(1, 0, 5), lookback=timedelta(hours=6)) == (t(14, 10), t(20, 8))


def test_later_runs_start_where_the_last_one_stopped_and_never_touch_an_unsettled_minute():
    assert plan(t(20, 15, 0), until=t(20, 8), first=t(20, 3, 24)) == (t(20, 8), t(20, 13))
    # a minute closed 119 s ago waits; 120 s ago is enough
    assert plan(t(20, 14, 59), until=t(20, 8)) == (t(20, 8), t(20, 12))
    assert plan(t(20, 15, 0), until=t(20, 8))[1] == t(20, 13)


def test_each_run_is_bounded_and_the_next_one_continues():
    first = plan(t(23, 0), until=t(12, 0), max_minutes=360)
    assert first == (t(12, 0), t(18, 0))
    assert plan(t(23, 5), until=first[1], max_minutes=360) == (t(18, 0), t(23, 3))


def test_nothing_to_do():
    assert plan(t(20, 10), first=None) is None                      # the exchange never streamed
    assert plan(t(20, 10), until=t(20, 8)) is None                   # up to date
    assert plan(t(20, 4, 30), first=t(20, 3, 24)) is None            # its first minute has not settled yet
    assert plan(t(20, 10), settle=timedelta(0), until=t(20, 10)) is None


def test_a_zero_settle_takes_every_closed_minute():
    assert plan(t(20, 10, 1), until=t(20, 5), settle=timedelta(0)) == (t(20, 5), t(20, 10))


@pytest.mark.parametrize("status, ok", [("done", True), ("up_to_date", True), ("never_streamed", True),
                                        ("off", True), ("busy", True), ("incomplete", False), ("failed", False)])
def test_result_says_whether_minutes_were_left_behind(status, ok):
    r = ReconcileResult("binance", status, t(20, 3), t(20, 8), t(20, 8))
    d = r.to_dict()
    assert r.ok is ok and d["ok"] is ok
    assert d["start"] == "2030-01-01T20:03:00+00:00" and d["reconciled_until"] == "2030-01-01T20:08:00+00:00"
