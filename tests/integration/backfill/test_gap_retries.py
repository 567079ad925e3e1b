"""A failed backfill (S3 down, exchange unreachable) is retried with backoff by the next
detection runs; a permanent failure (the request can never be valid) is not."""
from datetime import datetime, timedelta, timezone

import pytest

from backfill import gaps

pytestmark = pytest.mark.integration
UTC = timezone.utc


@pytest.fixture
def two_gaps(pg):
    start = datetime(2019, 3, 4, 5, 6, tzinfo=UTC)
    with pg.cursor() as cur:
        cur.execute("""INSERT INTO gaps (exchange, symbol, gap_start, gap_end, status, kind)
                       VALUES ('kucoin', 'RETRY-USDT', %s, %s, 'open', 'manual'),
                              ('kucoin', 'NEVER-USDT', %s, %s, 'open', 'manual') RETURNING id""",
                    (start, start + timedelta(minutes=3), start, start + timedelta(minutes=3)))
        ids = [r[0] for r in cur.fetchall()]
    yield ids
    with pg.cursor() as cur:
        cur.execute("DELETE FROM gaps WHERE id = ANY(%s)", (ids,))


def test_transient_failures_reopen_with_backoff_and_permanent_ones_never(two_gaps, pg):
    transient, permanent = two_gaps
    gaps.mark(transient, "failed", error="EndpointConnectionError: S3 down")
    gaps.mark(permanent, "failed", error="binance has no active spot market NEVER-USDT", permanent=True)
    now = datetime.now(UTC)
    assert gaps.reopen_failed(now) == []                       # the first retry waits 5 minutes
    reopened = gaps.reopen_failed(now + timedelta(minutes=6))
    assert transient in reopened and permanent not in reopened
    assert gaps.get_gap(transient).status == "open"
    assert gaps.get_gap(permanent).status == "failed"
    # the second failure doubles the wait
    gaps.mark(transient, "failed", error="again")
    assert transient not in gaps.reopen_failed(now + timedelta(minutes=9))
    assert transient in gaps.reopen_failed(now + timedelta(minutes=11))
    with pg.cursor() as cur:
        cur.execute("SELECT attempts, permanent FROM gaps WHERE id = %s", (transient,))
        assert cur.fetchone() == (2, False)


def test_attempts_are_bounded(two_gaps):
    transient, _ = two_gaps
    later = datetime.now(UTC) + timedelta(days=1)
    for _ in range(gaps.MAX_ATTEMPTS):
        gaps.mark(transient, "failed", error="still down")
        gaps.reopen_failed(later)
    assert gaps.get_gap(transient).status == "failed"
    assert gaps.reopen_failed(later) == []
