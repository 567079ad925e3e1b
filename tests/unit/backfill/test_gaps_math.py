from datetime import datetime, timedelta, timezone

from backfill.gaps import (clip, merge_intervals, minutes_to_intervals, subtract_intervals, widen_to_minutes)

UTC = timezone.utc


def t(h, m, s=0):
    return datetime(2030, 1, 1, h, m, s, tzinfo=UTC)


def test_merge_overlapping_and_touching():
    assert merge_intervals([(t(1, 5), t(1, 7)), (t(1, 0), t(1, 5)), (t(1, 9), t(1, 10))]) == \
        [(t(1, 0), t(1, 7)), (t(1, 9), t(1, 10))]
    assert merge_intervals([(t(1, 0), t(1, 5)), (t(1, 7), t(1, 8))], timedelta(minutes=3)) == [(t(1, 0), t(1, 8))]


def test_subtract():
    assert subtract_intervals([(t(1, 0), t(2, 0))], [(t(1, 10), t(1, 20)), (t(1, 50), t(2, 30))]) == \
        [(t(1, 0), t(1, 10)), (t(1, 20), t(1, 50))]
    assert subtract_intervals([(t(1, 0), t(1, 5))], [(t(0, 0), t(3, 0))]) == []
    assert subtract_intervals([(t(1, 0), t(1, 5))], []) == [(t(1, 0), t(1, 5))]


def test_partly_seen_edge_minutes_belong_to_the_gap():
    # stream lost at 10:03:20, back at 10:08:40: minutes 10:03 .. 10:08 inclusive
    assert widen_to_minutes([(t(10, 3, 20), t(10, 8, 40))]) == [(t(10, 3), t(10, 9))]
    assert widen_to_minutes([(t(10, 3), t(10, 8))]) == [(t(10, 3), t(10, 8))]


def test_minutes_to_intervals_and_clip():
    ms = [t(1, 0), t(1, 1), t(1, 2), t(1, 5)]
    assert minutes_to_intervals(ms) == [(t(1, 0), t(1, 3)), (t(1, 5), t(1, 6))]
    assert clip([(t(1, 0), t(1, 10))], t(1, 2), t(1, 4)) == [(t(1, 2), t(1, 4))]
    assert clip([(t(1, 0), t(1, 1))], t(1, 2), t(1, 4)) == []
