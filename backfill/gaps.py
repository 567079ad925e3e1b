"""Gaps in the stored 1-minute history: a facade over the modules that do the work.

Kept so that `from backfill.gaps import ...` (scripts, the test harness, older notes) goes on
working; new code imports from the module that owns the name:

- backfill.intervals  pure interval arithmetic (merge, subtract, clip, horizon, sharded coverage)
- backfill.detect     detection queries: detect_gaps, tracked_symbols (listed symbols passed in)
- backfill.gap_store  the gaps table: Gap, list/open/get, claim, mark, reopen_failed, mark_covered
- backfill.markets    listed_markets (the network read, done before), gap_symbols
- backfill.fill       fill (the one backfill service), request_for_gap, fill_gap

Patching a name here patches nothing: patch it in its own module.
"""
from backfill.detect import DEAD_LETTER_SLACK, MERGE_TOLERANCE, STALE_AFTER, detect_gaps, tracked_symbols
from backfill.fill import fill_gap, request_for_gap
from backfill.gap_store import (MAX_ATTEMPTS, RETRY_CAP, RETRY_FIRST, STATUSES, TRANSITIONS, Gap, claim, get_gap,
                                list_gaps, mark, mark_covered, open_gaps, reopen_failed)
from backfill.intervals import (MINUTE, Interval, clip, detection_horizon, merge_findings, merge_intervals,
                                minutes_to_intervals, scoped_uncovered, subtract_intervals, uncovered_minutes,
                                widen_to_minutes)
from backfill.markets import gap_symbols, listed_markets

__all__ = ["DEAD_LETTER_SLACK", "MERGE_TOLERANCE", "STALE_AFTER", "detect_gaps", "tracked_symbols", "fill_gap",
           "request_for_gap", "MAX_ATTEMPTS", "RETRY_CAP", "RETRY_FIRST", "STATUSES", "TRANSITIONS", "Gap", "claim",
           "get_gap", "list_gaps", "mark", "mark_covered", "open_gaps", "reopen_failed", "MINUTE", "Interval", "clip",
           "detection_horizon", "merge_findings", "merge_intervals", "minutes_to_intervals", "scoped_uncovered",
           "subtract_intervals", "uncovered_minutes", "widen_to_minutes", "gap_symbols", "listed_markets"]
