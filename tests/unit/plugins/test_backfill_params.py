"""Invalid crypto_backfill trigger parameters are rejected with messages a person understands:
types and shapes by the trigger form's Params (the API server's own check, run here through the
serialized DAG exactly as the server does), the rest by the `validate` task."""
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import backfill.fill
import backfill.gap_store
import backfill.validation
from plugins import backfill_tasks
from plugins.backfill_tasks import InvalidParams, plan, summarize, validate_and_claim, validate_params

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 25, 12, 0, 30, tzinfo=timezone.utc)
KNOWN = {"BTC-USDT", "ETH-USDT", "SOL-USDT"}


@pytest.fixture(scope="module")
def server_params():
    """The crypto_backfill params as the API server holds them (serialized DAG)."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder=str(ROOT / "dags" / "crypto_backfill.py"))
    assert bag.import_errors == {}
    dag = bag.dags["crypto_backfill"]
    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).params


def server_check(params, conf):
    from airflow.exceptions import ParamValidationError

    try:
        return params.deep_merge(conf).validate()
    except ParamValidationError as e:
        return str(e).splitlines()[0]


GOOD = {"exchange": "kucoin", "symbols": ["BTC-USDT"], "start": "2026-11-25T10:00:00Z",
        "end": "2026-11-25T11:00:00Z"}


def test_trigger_form_accepts_a_good_request_with_defaults(server_params):
    out = server_check(server_params, GOOD)
    assert out == {**GOOD, "dry_run": False, "max_tasks": 16, "gap_ids": []}


@pytest.mark.parametrize("conf, message", [
    ({**GOOD, "exchange": "bitfinex"}, "Invalid input for param exchange: 'bitfinex' is not one of ['binance', 'kucoin']"),
    ({k: v for k, v in GOOD.items() if k != "end"}, "Invalid input for param end: No value passed"),
    ({**GOOD, "symbols": "BTC-USDT"}, "Invalid input for param symbols: 'BTC-USDT' is not of type 'array'"),
    ({**GOOD, "symbols": []}, "Invalid input for param symbols: [] should be non-empty"),
    ({**GOOD, "dry_run": "maybe"}, "Invalid input for param dry_run: 'maybe' is not of type 'boolean'"),
    ({**GOOD, "symbols": ["BTC'; DROP TABLE gaps;--"]}, "Invalid input for param symbols: "
                                                         "\"BTC'; DROP TABLE gaps;--\" does not match"),
])
def test_trigger_form_rejects_bad_types_readably(server_params, conf, message):
    assert server_check(server_params, conf).startswith(message)


def params(**kw):
    return {**GOOD, "dry_run": False, "max_tasks": 16, "gap_ids": [], **kw}


@pytest.mark.parametrize("overrides, fragment", [
    ({"start": "2026-11-25T11:00:00Z", "end": "2026-11-25T10:00:00Z"},
     "end (2026-11-25 10:00 UTC) must be after start (2026-11-25 11:00 UTC)"),
    ({"start": "2026-11-01T00:00:00Z", "end": "2026-11-25T00:00:00Z"}, "the maximum is 168 hours"),
    ({"end": "2026-11-26T00:00:00Z"}, "end (2026-11-26 00:00 UTC) is in the future"),
    ({"symbols": ["DOGE-USDT", "BTC-USDT"]}, "kucoin has no active spot market DOGE-USDT"),
    ({"start": "yesterday"}, "start 'yesterday' is not a date-time; use ISO 8601 like 2024-05-01T12:00Z"),
    ({"max_tasks": 0}, "max_tasks must be a whole number from 1 to 256"),
    ({"gap_ids": ["7"]}, "gap_ids must be a list of gap ids"),
])
def test_validate_task_rejects_with_a_clear_message(overrides, fragment):
    with pytest.raises(InvalidParams) as err:
        validate_params(params(**overrides), now=NOW, known_symbols=KNOWN)
    assert fragment in str(err.value)
    assert str(err.value).startswith(("invalid backfill parameters: ", "max_tasks", "gap_ids"))


def test_validate_task_lists_every_problem_at_once():
    with pytest.raises(InvalidParams) as err:
        validate_params(params(exchange="ftx", start="2026-11-25T11:00Z", end="2026-11-25T10:00Z"), now=NOW,
                        known_symbols=KNOWN)
    assert "exchange 'ftx' is not supported" in str(err.value) and "must be after start" in str(err.value)


def test_validate_task_normalizes_a_good_request():
    out = validate_params(params(symbols=["eth/usdt", "BTC-USDT"], start="2026-11-25T10:00:20Z",
                                 end="2026-11-25T10:59:10Z"), now=NOW, known_symbols=KNOWN)
    assert out["request"] == {"exchange": "kucoin", "symbols": ["BTC-USDT", "ETH-USDT"],
                              "start": "2026-11-25T10:00:00+00:00", "end": "2026-11-25T11:00:00+00:00"}
    all_ = validate_params(params(symbols=["ALL"]), now=NOW, known_symbols=KNOWN)
    assert all_["request"]["symbols"] == sorted(KNOWN)


def test_an_invalid_request_leaves_the_gaps_it_names_as_they_were(monkeypatch):
    marked = []
    monkeypatch.setattr(backfill.gap_store, "mark", lambda gid, status, **kw: marked.append((gid, status, kw["error"])))
    with pytest.raises(InvalidParams):
        validate_params(params(symbols=["NOPE-USDT"], gap_ids=[41]), now=NOW, known_symbols=KNOWN)
    assert marked == []     # bad parameters are the run's fault: the gap stays repairable


def test_claims_only_gaps_it_gets(monkeypatch):
    monkeypatch.setattr(backfill.gap_store, "claim", lambda gid: gid != 8)
    out = validate_and_claim(params(gap_ids=[7, 8]), now=NOW, known_symbols=KNOWN)
    assert out["owned_gap_ids"] == [7]
    dry = validate_and_claim(params(gap_ids=[7], dry_run=True), now=NOW, known_symbols=KNOWN)
    assert dry["owned_gap_ids"] == []


def test_plan_bounds_the_number_of_mapped_tasks():
    validated = validate_params(params(symbols=["ALL"], exchange="binance", start="2026-11-20T00:00Z",
                                       end="2026-11-25T00:00Z", max_tasks=4), now=NOW, known_symbols=KNOWN)
    out = plan(validated)
    chunks = [c for batch in out["batches"] for c in batch]
    assert len(out["batches"]) == 4 and out["stats"]["chunks"] == len(chunks) > 4
    assert out["stats"]["minutes"] == 3 * 5 * 1440
    # every minute of every symbol planned exactly once
    assert sum(int((datetime.fromisoformat(c["end"]) - datetime.fromisoformat(c["start"])).total_seconds() // 60)
               for c in chunks) == 3 * 5 * 1440
    dry = plan({**validated, "dry_run": True})
    assert dry["batches"] == [] and dry["stats"]["chunks"] == out["stats"]["chunks"]


def batch_summary(**kw):
    base = {k: 0 for k in backfill_tasks._COUNTERS}
    base.update(chunks_total=1, chunks_done=1, rows_written=60, requests=1, failures=[])
    base.update(kw)
    return base


def test_summary_marks_covered_gaps_filled(monkeypatch):
    monkeypatch.setattr(backfill.gap_store, "mark_covered", lambda request, listed: [7])
    marks = []
    monkeypatch.setattr(backfill.gap_store, "mark", lambda gid, status, **kw: marks.append((gid, status)))
    validated = {**validate_params(params(), now=NOW, known_symbols=KNOWN), "owned_gap_ids": [7]}
    out = summarize(validated, {"chunks": 2}, [batch_summary(), batch_summary(chunks_done=0, chunks_skipped=1,
                                                                                rows_written=0)], 2)
    assert out["ok"] and out["gaps_filled"] == [7] and marks == []
    assert (out["chunks_done"], out["chunks_skipped"], out["rows_written"]) == (1, 1, 60)
    assert "gaps filled: [7]" in backfill_tasks.format_summary(out)


def test_summary_with_a_lost_task_fails_its_gaps(monkeypatch):
    monkeypatch.setattr(backfill.gap_store, "mark_covered", lambda request, listed: pytest.fail("must not fill"))
    marks = []
    monkeypatch.setattr(backfill.gap_store, "mark", lambda gid, status, **kw: marks.append((gid, status, kw["error"])))
    validated = {**validate_params(params(), now=NOW, known_symbols=KNOWN), "owned_gap_ids": [7]}
    out = summarize(validated, {"chunks": 3}, [batch_summary(), None], 3)
    assert not out["ok"] and out["batches_failed"] == 2
    assert marks == [(7, "failed", "2 of 3 tasks failed")] and out["gaps_failed"] == [7]


# -- crypto_gap_detection: open gaps -> crypto_backfill runs --------------------------------

def fake_gap(gid, exchange, symbol, minute_from, minute_to):
    t = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    return backfill.gap_store.Gap(gid, exchange, symbol, t + timedelta(minutes=minute_from),
                             t + timedelta(minutes=minute_to), "open", "missing_candles", t, None, None, None)


@pytest.fixture
def gaps_world(monkeypatch):
    """open_gaps newest-first-limited like backfill's; request_for_gap for symbol gaps; marks kept."""
    world = {"gaps": [], "marks": [], "down": set()}

    def request_for_gap(gap, now=None, known_symbols=None):
        if gap.exchange in world["down"]:
            raise backfill_rest_error("cannot load markets")
        return backfill.validation.validate_request(gap.exchange, [gap.symbol], gap.gap_start, gap.gap_end,
                                                    now=NOW, known_symbols=KNOWN,
                                                    max_window=gap.gap_end - gap.gap_start)

    monkeypatch.setattr(backfill.gap_store, "open_gaps", lambda limit=100: sorted(world["gaps"],
                                                                               key=lambda g: g.gap_start)[:limit])
    monkeypatch.setattr(backfill.fill, "request_for_gap", request_for_gap)
    monkeypatch.setattr(backfill.gap_store, "mark", lambda gid, status, **kw: world["marks"].append((gid, status,
                                                                                                 kw.get("error"))))
    return world


def backfill_rest_error(msg):
    from backfill.rest import FetchError

    return FetchError(msg)


def test_gaps_of_one_window_share_one_backfill_run(gaps_world):
    gaps_world["gaps"] = [fake_gap(1, "kucoin", "BTC-USDT", 5, 7), fake_gap(2, "kucoin", "ETH-USDT", 5, 7),
                          fake_gap(3, "binance", "BTC-USDT", 5, 7), fake_gap(4, "kucoin", "SOL-USDT", 20, 30)]
    out = backfill_tasks.backfill_triggers(10, "scheduled__2026-11-25T10:45:00+00:00")
    assert [o["conf"] for o in out] == [
        {"exchange": "kucoin", "symbols": ["BTC-USDT", "ETH-USDT"], "start": "2026-11-25T10:05:00+00:00",
         "end": "2026-11-25T10:07:00+00:00", "dry_run": False, "gap_ids": [1, 2]},
        {"exchange": "binance", "symbols": ["BTC-USDT"], "start": "2026-11-25T10:05:00+00:00",
         "end": "2026-11-25T10:07:00+00:00", "dry_run": False, "gap_ids": [3]},
        {"exchange": "kucoin", "symbols": ["SOL-USDT"], "start": "2026-11-25T10:20:00+00:00",
         "end": "2026-11-25T10:30:00+00:00", "dry_run": False, "gap_ids": [4]}]
    assert out[0]["trigger_run_id"] == "gaps_1_2__scheduled__2026-11-25T10:45:00+00:00"
    # at most `limit` runs, the oldest windows first
    assert [o["conf"]["gap_ids"] for o in backfill_tasks.backfill_triggers(1, "r")] == [[1, 2]]


def test_a_gap_that_can_never_be_filled_is_marked_failed(gaps_world):
    gaps_world["gaps"] = [fake_gap(1, "kucoin", "NOPE-USDT", 5, 7), fake_gap(2, "kucoin", "BTC-USDT", 5, 7)]
    out = backfill_tasks.backfill_triggers(10, "r")
    assert [o["conf"]["gap_ids"] for o in out] == [[2]]
    assert gaps_world["marks"] == [(1, "failed", "kucoin has no active spot market NOPE-USDT")]


def test_an_unreachable_exchange_leaves_its_gaps_open(gaps_world):
    gaps_world["gaps"] = [fake_gap(1, "binance", "BTC-USDT", 5, 7), fake_gap(2, "kucoin", "BTC-USDT", 5, 7)]
    gaps_world["down"] = {"binance"}
    out = backfill_tasks.backfill_triggers(10, "r")
    assert [o["conf"]["exchange"] for o in out] == ["kucoin"] and gaps_world["marks"] == []
    gaps_world["down"] = {"binance", "kucoin"}
    with pytest.raises(backfill_tasks.GapsNotPlanned, match="binance: FetchError: cannot load markets"):
        backfill_tasks.backfill_triggers(10, "r")
    assert gaps_world["marks"] == []


def test_gaps_beyond_the_limit_are_not_even_looked_at(gaps_world):
    gaps_world["gaps"] = [fake_gap(1, "kucoin", "BTC-USDT", 5, 7), fake_gap(2, "kucoin", "NOPE-USDT", 20, 30)]
    assert [o["conf"]["gap_ids"] for o in backfill_tasks.backfill_triggers(1, "r")] == [[1]]
    assert gaps_world["marks"] == []        # gap 2 waits for the next check, untouched
