"""Recorded exchange frames through the real pipeline (raw topic -> transformer -> Kafka ->
loader -> Postgres), checked field by field; bad frames land in the DLQ with their reason and
the stream keeps flowing."""
import json
import random
import uuid
from decimal import Decimal

import pytest

from common.codec.ticks import decode_ticks

from tests.conftest import SAMPLES
from tests.integration.sinks_util import (stop_leftover_daemons, topics,  # noqa: F401
                                          Daemon, committed, end_offsets,
                                          produce, raw_headers, read_topic, wait_until)

pytestmark = pytest.mark.integration

# after every recorded frame (2026-11-18), plus a per-run microsecond offset that marks our rows
RECEIVED_NS = 1_795_000_000_000_000_000 + random.randrange(1, 10**6) * 1000


def lines(name):
    return [l.encode() for l in (SAMPLES / name).read_text().splitlines() if l.strip()]


def binance_frames():
    frames = [(SAMPLES / "binance-miniTicker-arr-2022-10-14.json").read_bytes().strip()]
    frames += lines("binance-ws-unicorn-fy-2020.jsonl")[:3]          # SUBSCRIBE reply, aggTrade, trade
    tardis = lines("binance-ws-tardis-2019.jsonl")
    frames += [tardis[0], tardis[3]]                                 # trade, DOGEBNB ticker (not TRADING in 2021)
    frames += [b'{"stream":"btcusdt@trade","data":{"e":"trade"',     # truncated
               b'{"stream":"x@trade","data":{"e":"trade","E":1554076800945,"s":"BNBBTC","t":1,"p":"NaN","q":"1"}}',
               b'{"stream":"x@trade","data":{"e":"trade","E":99,"s":"BNBBTC","t":2,"p":"1.0","q":"1"}}']
    frames.append(tardis[1])                                         # a good frame after the bad ones
    return frames


def kucoin_frames():
    live = lines("kucoin-ws-live-2026-10-03.jsonl")
    return (live + lines("kucoin-ws-crypto-crawler-2021-2022.jsonl") + lines("kucoin-ws-tardis-2022-08-16.jsonl")
            + [live[0]])                                             # a duplicated frame: still one row


# (exchange, symbol, event_time_ms, sequence) -> expected columns
EXPECTED = {
    ("binance", "BTC-USDT", 1665778598188, 0): dict(
        price="19182.10000000", open_24h="19478.02", high_24h="19951.87", low_24h="19100.01",
        volume_24h="363872.29609", quote_volume_24h="7119945056.1549644", bid=None, ask=None),
    ("binance", "BTC-USDT", 1592584651517, 315753210): dict(price="9319", last_size="0.018649", bid=None),
    ("binance", "BNB-BTC", 1554076800945, 40756030): dict(price="0.0042699", last_size="33.82"),
    ("binance", "BNB-BTC", 1567296001038, 60276726): dict(price="0.0021965", last_size="6.48"),
    ("kucoin", "MOG-USDT", 1790983975701, 1226485690): dict(
        price="0.0000001141", bid="0.000000114", bid_size="110091671", ask="0.0000001143",
        ask_size="10171660581", last_size="133465474"),
    ("kucoin", "ETH-USDT", 1790984011673, 23242050174): dict(price="2667.64", bid="2667.6", ask="2667.61",
                                                           last_size="0.002"),
    ("kucoin", "DOT-USDT", 1653955200018, 1619386350765): dict(price="10.4686", bid="10.4647"),
    ("kucoin", "BTC-USDT", 1660608000026, 1636276321894): dict(price="24093.9", last_size="0.00001255"),
    ("kucoin", "APE3S-USDT", 1660608019966, 1653547330151): dict(price="0.909", ask_size="404.3024"),
}


def first_line_exchange_info():
    first = (SAMPLES / "cryptofeed-BINANCE.0.txt").read_text().split("\n", 1)[0]
    return first.split(": ", 1)[1]


def test_recorded_frames_become_the_expected_rows(pg, topics, tmp_path):
    symbols_file = tmp_path / "exchangeInfo.json"
    symbols_file.write_text(first_line_exchange_info())
    bframes, kframes = binance_frames(), kucoin_frames()
    produce("binance_raw_data" + topics,
            [(b"c-b", f, raw_headers(RECEIVED_NS, "c-b", "binance")) for f in bframes], partition=0)
    produce("kucoin_raw_data" + topics,
            [(b"c-k", f, raw_headers(RECEIVED_NS, "c-k", "kucoin")) for f in kframes], partition=1)
    group = uuid.uuid4().hex
    transformer = Daemon(["transform", "--group", "transformer-" + group, "--topic-suffix", topics, "--instance", group,
                          "--binance-symbols-file", str(symbols_file), "--metrics-port", "0"], tmp_path, "t").start()
    wait_until(lambda: committed("transformer-" + group, "binance_raw_data" + topics, 3) == end_offsets("binance_raw_data" + topics, 3)
               and committed("transformer-" + group, "kucoin_raw_data" + topics, 3) == end_offsets("kucoin_raw_data" + topics, 3),
               120, "the transformer", [transformer])
    out_by = {ex: read_topic(f"{ex}_transformed_data{topics}") for ex in ("binance", "kucoin")}
    out = [t for ex, records in out_by.items() for m in records for t in decode_ticks(m.value(), m.headers(), ex)]
    with pg.cursor() as cur:     # a previous run stored these keys: make room so the rows are ours
        for t in out:
            cur.execute("DELETE FROM ticks WHERE exchange = %s AND symbol = %s AND sequence = %s "
                        "AND event_time = timestamptz 'epoch' + %s * interval '1 millisecond'",
                        (t.exchange, t.symbol, t.sequence, t.event_time_ms))
    loader = Daemon(["load", "--group", "loader-" + group, "--topic-suffix", topics, "--retention-days", "0",
                     "--metrics-port", "0"], tmp_path, "l").start()
    # the loader's commits pass the transaction markers too: committed reaches the end offsets
    wait_until(lambda: all(committed("loader-" + group, f"{ex}_transformed_data{topics}", 3)
                           == end_offsets(f"{ex}_transformed_data{topics}", 3) for ex in out_by),
               120, "the loader", [loader])
    assert transformer.term() == 0 and loader.term() == 0

    # every tick on the transformed topics is a row stamped with our receive time
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM ticks WHERE received_at = timestamptz 'epoch' + %s * interval '1 microsecond'",
                    (RECEIVED_NS // 1000,))
        assert len(out) == 32 + 2 + 2 + 2 + 3 + 4 + 1                # the duplicate is transformed twice ...
        assert cur.fetchone()[0] == len(out) - 1                     # ... and stored once
        cols = ["price", "bid", "bid_size", "ask", "ask_size", "last_size", "open_24h", "high_24h", "low_24h",
                "volume_24h", "quote_volume_24h"]
        for (ex, sym, ms, seq), want in EXPECTED.items():
            cur.execute(f"SELECT {', '.join(cols)}, received_at FROM ticks WHERE exchange = %s AND symbol = %s "
                        "AND sequence = %s AND event_time = timestamptz 'epoch' + %s * interval '1 millisecond'",
                        (ex, sym, seq, ms))
            got = cur.fetchall()
            assert len(got) == 1, (ex, sym, ms, seq)
            row = dict(zip(cols + ["received_at"], got[0]))
            assert int(row["received_at"].timestamp() * 1_000_000) == RECEIVED_NS // 1000
            for name, value in want.items():
                assert row[name] == (None if value is None else Decimal(value)), (ex, sym, name)

    # the DLQ holds the bad frames, byte for byte, with reasons and coordinates
    bdlq = {int(dict(m.headers())["source_offset"]): m for m in read_topic("binance_dlq" + topics)}
    reasons = {off: dict(m.headers())["reason"].decode() for off, m in bdlq.items()}
    assert sorted(bdlq) == [0, 5, 6, 7, 8]
    assert reasons[0].startswith("9 bad element(s)") and "unknown_symbol" in reasons[0]
    assert dict(bdlq[0].headers())["rejected_elements"]
    assert "unknown_symbol" in reasons[5] and "DOGEBNB" in reasons[5]
    assert reasons[6].startswith("malformed_json") and "non_finite" in reasons[7] and "absurd_timestamp" in reasons[8]
    assert all(bdlq[o].value() == bframes[o] for o in bdlq)
    assert dict(bdlq[6].headers())["source_topic"] == ("binance_raw_data" + topics).encode()
    kdlq = read_topic("kucoin_dlq" + topics)
    assert sorted(dict(m.headers())["reason"].decode().split(":")[0] + ":" + dict(m.headers())["reason"].decode().split(":")[1]
                  for m in kdlq) == ["unsupported_topic:/market/candles", "unsupported_topic:/market/level2",
                                     "unsupported_topic:/market/snapshot"]
