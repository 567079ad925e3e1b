"""The ground truth's records: files for long runs, and one record per connection with its counters."""
import json
import time

from sim.truth import Truth


def test_truth_files_are_written_and_pruned(tmp_path):
    old = tmp_path / "ticks-20000101-00.jsonl"
    old.write_text("[]\n")
    t = Truth(10, str(tmp_path), keep_hours=1)
    t.open_conn("k1", "kucoin", "/kucoin-ws/endpoint")
    sent = int(time.time() * 1000)
    t.add_many("k1", (("kucoin", "ticker:all", "BTC-USDT", sent - 7, 7, "62056.8"),), sent)
    t.close_conn("k1", "client_closed")
    assert t.flush_files() == 1
    assert not old.exists()
    (f,) = tmp_path.glob("ticks-*.jsonl")
    assert json.loads(f.read_text()) == ["kucoin", "k1", "ticker:all", "BTC-USDT", sent - 7, 7, "62056.8", sent, ""]
    events = [json.loads(x) for x in (tmp_path / "connections.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["open", "close"] and events[1]["close_reason"] == "client_closed"


def test_truth_records_each_connection_with_its_counters(tmp_path):
    t = Truth(10, str(tmp_path))
    rec = t.open_conn("b1", "binance", "/binance-ws/ws", client_conn_id="pipe-7")
    assert rec is t.connections["b1"]
    assert {k: rec[k] for k in ("ticks_sent", "data_frames_sent", "frames_sent", "ticks_flagged", "first_sent_ms",
                                "notice", "client_conn_id")} == \
        {"ticks_sent": 0, "data_frames_sent": 0, "frames_sent": 0, "ticks_flagged": {}, "first_sent_ms": None,
         "notice": None, "client_conn_id": "pipe-7"}
    t.open_conn("b2", "binance", "/binance-ws/ws")
    rec["ticks_sent"] = 3
    rec["ticks_flagged"]["dup"] = 1
    listed = t.connections_list(client_conn_id="pipe-7")
    assert [c["conn_id"] for c in listed] == ["b1"] and listed[0]["ticks_sent"] == 3
    listed[0]["ticks_flagged"]["dup"] = 99            # a copy: the registry is not changed through it
    assert rec["ticks_flagged"] == {"dup": 1}
    t.close_conn("b1", "client_closed")
    t.flush_files()
    events = [json.loads(x) for x in (tmp_path / "connections.jsonl").read_text().splitlines()]
    assert [(e["event"], e["conn_id"]) for e in events] == [("open", "b1"), ("open", "b2"), ("close", "b1")]
    assert events[2]["ticks_sent"] == 3 and events[2]["ticks_flagged"] == {"dup": 1}
