"""backfill.fill: one service for every backfill. What a fill settles, and when it asks the network.

The engine and the gap store are replaced by fakes that record their calls (the same flow on the
real Postgres and simulator: tests/integration/backfill/test_fill_service.py, test_gaps_flow.py)."""
from datetime import datetime, timezone

import pytest

import backfill.fill
import backfill.gap_store
import backfill.rest
from backfill.engine import ChunkResult, Summary
from backfill.fill import fill, settle
from backfill.metrics import errors_seen
from backfill.validation import validate_request

UTC = timezone.utc
NOW = datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC)
LISTED = {"BTC-USDT", "ETH-USDT"}


def request():
    return validate_request("binance", ["BTC-USDT"], "2026-11-25T10:00Z", "2026-11-25T10:30Z", now=NOW,
                            known_symbols=LISTED)


def summary_of(*statuses, rows=5):
    s = Summary(request=request().to_dict(), chunks_total=len(statuses))
    for st in statuses:
        s.add(ChunkResult(chunk={"symbol": "BTC-USDT", "start": "s", "end": "e"}, status=st,
                          rows_written=rows if st == "done" else 0, error="boom" if st == "failed" else None))
    return s


@pytest.fixture
def store(monkeypatch):
    """The gap store's writes, recorded; mark_covered 'covers' the ids in covers."""
    world = {"covered_with": [], "marks": [], "covers": [], "refuse": set()}

    def mark_covered(req, listed):
        world["covered_with"].append((req.exchange, None if listed is None else set(listed)))
        return list(world["covers"])

    def mark(gap_id, status, **kw):
        if gap_id in world["refuse"]:
            raise ValueError(f"gap {gap_id} is filled; it cannot become {status}")
        world["marks"].append((gap_id, status, kw.get("error"), kw.get("rows_filled"), kw.get("permanent", False)))
        return backfill.gap_store.Gap(gap_id, "binance", "BTC-USDT", NOW, NOW, status, None)

    monkeypatch.setattr(backfill.gap_store, "mark_covered", mark_covered)
    monkeypatch.setattr(backfill.gap_store, "mark", mark)
    return world


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("this step must not list the exchange's markets")
    monkeypatch.setattr(backfill.rest, "known_symbols", refuse)


def engine_returns(monkeypatch, summary):
    calls = []

    def run_backfill(req, progress=None, **kw):
        calls.append(kw)
        return summary
    monkeypatch.setattr(backfill.fill, "run_backfill", run_backfill)
    return calls


def test_a_complete_fill_settles_its_gaps_with_the_listed_symbols_it_was_given(monkeypatch, store, no_network):
    calls = engine_returns(monkeypatch, summary_of("done", "skipped"))
    store["covers"] = [7, 9]
    out = fill(request(), listed=LISTED, owned=[7, 8], workers=3, purpose="reconcile")
    assert out.complete and out.settled.filled == [7, 9]
    assert store["covered_with"] == [("binance", LISTED)]
    # owned gap 8 was not inside the request: open again for the next run, not filled
    assert store["marks"] == [(8, "open", None, None, False)] and out.settled.reopened == [8]
    assert calls[0]["workers"] == 3 and calls[0]["purpose"] == "reconcile"
    assert out.to_dict()["gaps_filled"] == [7, 9] and out.to_dict()["rows_written"] == 5


def test_an_incomplete_fill_fills_nothing_and_fails_the_gaps_it_owns_with_the_reason(monkeypatch, store, no_network):
    engine_returns(monkeypatch, summary_of("done", "failed"))
    out = fill(request(), listed=LISTED, owned=[7])
    assert not out.complete and store["covered_with"] == []
    assert store["marks"] == [(7, "failed", "BTC-USDT s: boom", 5, False)] and out.settled.failed == [7]
    engine_returns(monkeypatch, summary_of("done", "partial"))
    store["marks"].clear()
    assert not fill(request(), listed=LISTED, owned=[7]).complete
    assert store["marks"] == [(7, "failed", "1 chunk(s) not settled yet", 5, False)]


def test_listed_symbols_are_read_once_before_the_fill_when_not_given(monkeypatch, store):
    order = []
    monkeypatch.setattr(backfill.rest, "known_symbols", lambda ex, purpose="backfill": order.append("markets") or LISTED)
    monkeypatch.setattr(backfill.fill, "run_backfill", lambda *a, **kw: order.append("fetch") or summary_of("done"))
    fill(request())
    assert order == ["markets", "fetch"] and store["covered_with"] == [("binance", LISTED)]


def test_a_batch_or_a_dry_run_settles_nothing_and_asks_no_exchange(monkeypatch, store, no_network):
    dry = fill(request(), dry_run=True)         # the real engine: a dry run only plans
    assert dry.summary.dry_run and dry.summary.chunks_total == 1 and dry.summary.minutes == 30
    assert not dry.complete
    engine_returns(monkeypatch, summary_of("done"))
    batch = fill(request(), settle_gaps=False)
    assert batch.summary.chunks_done == 1 and batch.settled.filled == []
    assert store["covered_with"] == [] and store["marks"] == []


def test_an_engine_that_raises_fails_the_owned_gaps_and_raises(monkeypatch, store, no_network):
    def broken(*a, **kw):
        raise OSError("database gone")
    monkeypatch.setattr(backfill.fill, "run_backfill", broken)
    with pytest.raises(OSError, match="database gone"):
        fill(request(), listed=LISTED, owned=[4])
    assert store["marks"] == [(4, "failed", "OSError: database gone", None, False)]


def test_a_gap_settled_elsewhere_meanwhile_is_logged_and_counted_not_raised(store, caplog):
    before = errors_seen("fill.settle", "ValueError")
    store["refuse"] = {5}
    out = settle(request(), complete=False, listed=None, owned=[5, 6], rows_written=0, reason="2 of 3 tasks failed")
    assert out.failed == [6] and errors_seen("fill.settle", "ValueError") == before + 1
    assert "gap 5 not marked failed: gap 5 is filled; it cannot become failed" in caplog.text
