"""WS /v1/stream of the running `api` program, held against the simulator's ground truth: every
tick a client receives is one the simulator sent (same exchange, symbol, exchange time, exact
price), in order per symbol, none twice; and `GET /v1/prices` serves what `latest_prices` holds."""
import json
import threading
import time
import urllib.request
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.plugins.pipeline import now_ms, wait_for

pytestmark = pytest.mark.e2e
UTC = timezone.utc


def api_url() -> str:
    from cryptopipe.stack.paths import API_PORT

    return f"127.0.0.1:{API_PORT}"


def wait_api_streaming(timeout: float = 90) -> None:
    def ready():
        try:
            with urllib.request.urlopen(f"http://{api_url()}/v1/health", timeout=10) as r:
                return json.load(r)["stream"]["kafka_assigned"] or None
        except OSError:
            return None
    wait_for(ready, timeout, "the api program tailing Kafka")


def collect(path: str, seconds: float) -> list[dict]:
    got: list[dict] = []
    with connect(f"ws://{api_url()}{path}", open_timeout=10, max_size=2**24) as ws:
        def run():
            try:
                for frame in ws:
                    data = json.loads(frame)
                    got.extend(data if isinstance(data, list) else [data])
            except ConnectionClosed:
                pass
        t = threading.Thread(target=run, daemon=True)
        t.start()
        time.sleep(seconds)
    t.join(5)
    return got


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_every_streamed_tick_is_one_the_simulator_sent_in_order(live_pipeline, pg):
    h = live_pipeline
    h.wait_streaming(pg)
    wait_api_streaming()
    t0 = now_ms()
    everything = collect("/v1/stream", 20)
    t1 = now_ms()
    assert len(everything) > 100, f"only {len(everything)} ticks in 20 s"
    per_key: dict[tuple[str, str], list[dict]] = {}
    for t in everything:
        assert set(t) == {"exchange", "symbol", "price", "event_time"} and t["event_time"].endswith("Z")
        per_key.setdefault((t["exchange"], t["symbol"]), []).append(t)
    for exchange in ("binance", "kucoin"):
        truth = {}
        for r in h.sim.truth(exchange=exchange, since_ms=t0 - 60_000, until_ms=t1 + 5_000):
            if r.get("flag") in ("malformed", "truncated"):
                continue
            truth.setdefault((r["symbol"], int(r["event_ms"])), set()).add(Decimal(r["price"]))
        mine = [t for (ex, _), ts in per_key.items() if ex == exchange for t in ts]
        assert mine, f"nothing streamed for {exchange}"
        unknown = [t for t in mine if Decimal(t["price"]) not in truth.get((t["symbol"], ms(t["event_time"])), ())]
        assert not unknown, f"{exchange}: {len(unknown)} ticks the simulator never sent, e.g. {unknown[:3]}"
    for key, ts in per_key.items():
        times = [ms(t["event_time"]) for t in ts]
        assert times == sorted(times), f"{key}: out of order"
        pairs = [(t["event_time"], t["price"]) for t in ts]
        assert len(pairs) == len(set(pairs)), f"{key}: a tick sent twice"


def test_prices_endpoint_serves_latest_prices(live_pipeline, pg):
    live_pipeline.wait_streaming(pg)
    with urllib.request.urlopen(f"http://{api_url()}/v1/prices", timeout=10) as r:
        served = json.load(r)
    with pg.cursor() as cur:
        cur.execute("SELECT exchange, symbol, price, event_time FROM ticks WHERE (exchange, symbol, event_time) IN "
                    "(SELECT exchange, symbol, event_time FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) "
                    "AS x(exchange, symbol, event_time))",
                    ([p["exchange"] for p in served], [p["symbol"] for p in served],
                     [p["event_time"] for p in served]))
        stored = {(ex, sym, t): price for ex, sym, price, t in cur.fetchall()}
    assert len(served) >= 10
    for p in served:
        t = datetime.fromisoformat(p["event_time"].replace("Z", "+00:00"))
        assert stored.get((p["exchange"], p["symbol"], t)) == Decimal(p["price"]), p
