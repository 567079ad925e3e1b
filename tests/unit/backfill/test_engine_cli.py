import json
from datetime import datetime, timedelta, timezone

import pytest

from backfill.cli import backfill_main, gaps_main
from backfill.engine import Chunk, ChunkResult, Summary, plan_chunks
from backfill.validation import BackfillRequest

UTC = timezone.utc


def test_chunks_follow_the_exchange_grid_and_cover_the_window_exactly():
    start = datetime(2024, 5, 1, 10, 7, tzinfo=UTC)
    req = BackfillRequest("binance", ("BTC-USDT", "ETH-USDT"), start, start + timedelta(minutes=2500))
    chunks = plan_chunks(req)
    for symbol in req.symbols:
        mine = [c for c in chunks if c.symbol == symbol]
        assert mine[0].start == req.start and mine[-1].end == req.end
        assert all(a.end == b.start for a, b in zip(mine, mine[1:]))
        assert all(0 < c.minutes <= 1000 for c in mine)
        # inner boundaries sit on multiples of 1000 minutes since the epoch
        assert all(int(c.end.timestamp()) // 60 % 1000 == 0 for c in mine[:-1])
    kucoin = plan_chunks(BackfillRequest("kucoin", ("BTC-USDT",), start, start + timedelta(minutes=2500)))
    assert all(c.minutes <= 1500 for c in kucoin) and sum(c.minutes for c in kucoin) == 2500


def test_chunks_and_results_are_plain_json():
    c = Chunk("kucoin", "ETH-BTC", datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 1, 1, tzinfo=UTC))
    d = json.loads(json.dumps(c.to_dict()))
    assert Chunk.from_dict(d) == c
    r = ChunkResult(chunk=d, status="done", rows_written=60)
    s = Summary(request={"exchange": "kucoin"})
    s.add(r)
    s.add(ChunkResult(chunk=d, status="failed", error="boom"))
    out = json.loads(json.dumps(s.to_dict()))
    assert out["chunks_done"] == 1 and out["chunks_failed"] == 1 and out["ok"] is False
    assert out["failures"] == [{**d, "error": "boom"}]


@pytest.mark.parametrize("bad", [{"exchange": "nyse"}, {"symbol": "../x"}, {"start": "never"}])
def test_chunk_from_dict_rejects_hostile_input(bad):
    d = {"exchange": "binance", "symbol": "BTC-USDT", "start": "2024-05-01T00:00Z", "end": "2024-05-01T01:00Z"}
    with pytest.raises(ValueError):
        Chunk.from_dict({**d, **bad})


@pytest.mark.parametrize("argv, words", [
    (["--exchange", "binance", "--symbols", "BTC-USDT;DROP", "--start", "2024-05-01", "--end", "2024-05-02"],
     "is not BASE-QUOTE"),
    (["--exchange", "mtgox", "--symbols", "BTC-USDT", "--start", "2024-05-01", "--end", "2024-05-02"],
     "not supported"),
    (["--exchange", "binance", "--symbols", "BTC-USDT", "--start", "2024-05-02", "--end", "2024-05-01"],
     "must be after start"),
    (["--exchange", "binance", "--symbols", "BTC-USDT", "--start", "0001-01-01", "--end", "9999-12-31"],
     "in the future"),
    (["--exchange", "binance", "--symbols", "BTC-USDT"], "required"),
    (["--exchange", "binance", "--symbols", "BTC-USDT", "--start", "2024-05-01", "--end", "2024-05-02",
      "--workers", "0"], "--workers"),
])
def test_backfill_cli_rejects_bad_parameters_with_exit_2(argv, words, capsys):
    try:
        code = backfill_main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "invalid parameters" in err and words in err


def test_gaps_cli_rejects_bad_status(capsys):
    with pytest.raises(SystemExit) as e:
        gaps_main(["--status", "'; DROP TABLE gaps; --"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_only_chunks_ending_within_the_settle_time_wait_and_never_longer():
    from backfill.engine import _wait_until_settled
    from backfill.rest import SETTLE_S

    now = datetime.now(UTC)
    slept = []
    assert _wait_until_settled(now - timedelta(minutes=5), slept.append) == 0 and slept == []
    assert _wait_until_settled(now + timedelta(minutes=5), slept.append) == 0 and slept == []   # bogus: no wait
    waited = _wait_until_settled(now - timedelta(seconds=10), slept.append)
    assert SETTLE_S - 11 < waited <= SETTLE_S - 9 and slept == [waited]


def test_reconcile_cli_says_when_reconciliation_is_off(monkeypatch, capsys):
    from backfill.cli import reconcile_main
    from common.settings import get_settings

    monkeypatch.setenv("RECONCILE", "off")
    get_settings.cache_clear()
    try:
        assert reconcile_main([]) == 0
        assert "reconciliation is off (RECONCILE=off)" in capsys.readouterr().out
        assert reconcile_main(["--json"]) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "off"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.parametrize("argv, words", [(["--settle-seconds", "-1"], "--settle-seconds"),
                                         (["--max-minutes", "0"], "--max-minutes"),
                                         (["--workers", "99"], "--workers")])
def test_reconcile_cli_rejects_bad_parameters(argv, words, capsys):
    from backfill.cli import reconcile_main

    assert reconcile_main(argv) == 2
    err = capsys.readouterr().err
    assert "invalid parameters" in err and words in err


def test_reconcile_setting_reads_on_and_off(monkeypatch):
    from common.settings import Settings

    for text, value in (("off", False), ("on", True), ("0", False), ("true", True)):
        monkeypatch.setenv("RECONCILE", text)
        assert Settings().reconcile is value
    monkeypatch.delenv("RECONCILE")
    assert Settings().reconcile is True and Settings().reconcile_settle_seconds == 120
