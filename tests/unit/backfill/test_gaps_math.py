from datetime import datetime, timedelta, timezone

from backfill.intervals import (clip, merge_intervals, minutes_to_intervals, scoped_uncovered, subtract_intervals,
                           widen_to_minutes)

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


# -- sharded sessions: a shard down while the others stream ---------------------------------

A, B = ["AAA-USDT", "BBB-USDT"], ["CCC-USDT"]


def test_a_down_shard_leaves_its_symbols_uncovered_edges_included():
    sessions = [(t(10, 0), t(11, 0), A),                          # shard 1 up all along
                (t(10, 0), t(10, 20, 30), B), (t(10, 31, 10), t(11, 0), B)]   # shard 2 down 10:20:30-10:31:10
    got = scoped_uncovered(sessions, t(10, 0), t(11, 0))
    assert got == {"CCC-USDT": [(t(10, 20), t(10, 32))]}


def test_unsharded_sessions_cover_every_symbol_and_no_shard_means_nothing_to_say():
    assert scoped_uncovered([(t(10, 0), t(11, 0), None)], t(10, 0), t(11, 0), ["AAA-USDT"]) == {}
    sessions = [(t(10, 0), t(10, 30), None), (t(10, 30), t(11, 0), A)]   # restarted with shards at 10:30
    assert scoped_uncovered(sessions, t(10, 0), t(11, 0), ["AAA-USDT", "CCC-USDT"]) == \
        {"CCC-USDT": [(t(10, 30), t(11, 0))]}     # configured, but no shard carries it since 10:30


def test_horizon_configured_symbols_to_the_end_others_only_while_streamed():
    sessions = [(t(10, 0), t(11, 0), A), (t(10, 0), t(10, 40), B)]    # shard 2 never came back
    assert scoped_uncovered(sessions, t(10, 0), t(11, 0), ["CCC-USDT"]) == {"CCC-USDT": [(t(10, 40), t(11, 0))]}
    # not configured (dropped from SYMBOLS, or a CLI list): no gap after its last session
    assert scoped_uncovered(sessions, t(10, 0), t(11, 0)) == {}
    # a shard carrying no ticker stream covers nothing and claims nothing
    assert scoped_uncovered([(t(10, 0), t(11, 0), []), (t(10, 0), t(11, 0), None)], t(10, 0), t(11, 0)) == {}


def test_rotation_overlap_is_covered():
    sessions = [(t(10, 0), t(10, 30, 5), B), (t(10, 30), t(11, 0), B), (t(10, 0), t(11, 0), A)]
    assert scoped_uncovered(sessions, t(10, 0), t(11, 0), A + B) == {}


def test_findings_merge_with_their_kinds():
    from backfill.intervals import merge_findings
    got = merge_findings([((t(10, 11), t(10, 16)), {"missing_candles"}), ((t(10, 10), t(10, 17)), {"uncovered"}),
                          ((t(10, 17), t(10, 18)), {"missing_candles"}), ((t(10, 30), t(10, 31)), {"uncovered"})])
    assert got == [((t(10, 10), t(10, 18)), {"missing_candles", "uncovered"}), ((t(10, 30), t(10, 31)), {"uncovered"})]


def test_silences_widen_by_a_minute_each_side_and_spans_carry_their_kinds():
    from backfill.intervals import label_spans, silences

    # silent 10:05 and 10:06: 10:04 and 10:07 were heard only in part; clipped to the horizon
    assert silences([t(10, 5), t(10, 6)], t(10, 0), t(11, 0)) == [(t(10, 4), t(10, 8))]
    assert silences([t(10, 0)], t(10, 0), t(11, 0)) == [(t(10, 0), t(10, 2))]
    assert silences([], t(10, 0), t(11, 0)) == []
    uncovered = [(t(10, 0), t(10, 5)), (t(10, 30), t(10, 31))]
    silent = [(t(10, 4), t(10, 8)), (t(10, 40), t(10, 42))]
    assert label_spans(uncovered, silent) == [((t(10, 0), t(10, 8)), {"uncovered", "silence"}),
                                              ((t(10, 30), t(10, 31)), {"uncovered"}),
                                              ((t(10, 40), t(10, 42)), {"silence"})]


# -- the detection horizon: no minute between the lookback and the first session is lost -------

def test_horizon_is_the_lookback_window_whenever_the_stream_began():
    from backfill.intervals import detection_horizon

    assert detection_horizon(t(20, 3, 19), timedelta(hours=6), timedelta(seconds=60)) == (t(14, 3), t(20, 2))
    # two runs less than lookback - settle apart see horizons that overlap: nothing falls between
    for gap in (timedelta(minutes=15), timedelta(hours=5, minutes=58)):
        lo1, hi1 = detection_horizon(t(20, 3, 19), timedelta(hours=6), timedelta(seconds=60))
        lo2, hi2 = detection_horizon(t(20, 3, 19) + gap, timedelta(hours=6), timedelta(seconds=60))
        assert lo2 <= hi1 and hi2 > hi1


def test_the_run_after_the_first_session_finds_the_minute_before_it_and_its_partly_seen_minute():
    """Issue 13: the first detection ran at 20:03:19, before the first session (20:03:24). It
    found 14:03..20:02 (no session: all uncovered). The next run, at 20:18:19, must find the
    minutes before the session it has not seen yet, 20:02 and the partly seen 20:03."""
    from backfill.intervals import detection_horizon, uncovered_minutes

    lo, hi = detection_horizon(t(20, 3, 19), timedelta(hours=6), timedelta(seconds=60))
    first_run = uncovered_minutes(lo, hi, [])
    assert first_run == [(t(14, 3), t(20, 2))]
    lo, hi = detection_horizon(t(20, 18, 19), timedelta(hours=6), timedelta(seconds=60))
    second_run = uncovered_minutes(lo, hi, [(t(20, 3, 24), t(20, 18, 19))])
    assert second_run == [(t(14, 18), t(20, 4))]
    # together (detection never records a minute twice) they leave no minute of the window out
    assert merge_intervals(first_run + second_run) == [(t(14, 3), t(20, 4))]


def test_every_partly_seen_minute_at_a_gap_edge_is_uncovered():
    from backfill.intervals import uncovered_minutes

    coverage = [(t(10, 0, 30), t(10, 5, 10)), (t(10, 7, 50), t(10, 20))]
    assert uncovered_minutes(t(10, 0), t(10, 20), coverage) == [(t(10, 0), t(10, 1)), (t(10, 5), t(10, 8))]
    assert uncovered_minutes(t(10, 0), t(10, 20), [(t(9, 0), t(11, 0))]) == []
