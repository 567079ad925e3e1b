"""Runs cryptofeed (from PyPI, in its own venv) against the project's simulator, with its stock
Kafka and Postgres ticker backends. Executed by that venv's interpreter: it imports nothing of
this repository, and copies no cryptofeed code — it only points cryptofeed's class-level endpoints
at the simulator and picks the topic/table names.

    <venv>/bin/python cryptofeed_launcher.py --binance-ws URL --binance-rest URL --kucoin-rest URL \
        --exchanges binance,kucoin --kafka 127.0.0.1:9092 --topic T --table TABLE --stats FILE
    (Postgres connection from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; Kafka identity from
    KAFKA_SECURITY_PROTOCOL/KAFKA_SASL_MECHANISM/KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD, passed to
    aiokafka, cryptofeed's own Kafka client, which speaks SASL/SCRAM-SHA-512)

Every 0.2 s it writes {"received": n, "at": unix time} to --stats: the ticker updates
cryptofeed handed to its callbacks (what it was offered), for the bench to compare with the rows
it stored.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time


def kafka_security() -> dict:
    """aiokafka's names for the settings the bench passes in the environment (never on the command line)."""
    protocol = os.environ.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    if not protocol.upper().startswith("SASL"):
        return {"security_protocol": protocol}
    return {"security_protocol": protocol, "sasl_mechanism": os.environ["KAFKA_SASL_MECHANISM"],
            "sasl_plain_username": os.environ["KAFKA_SASL_USERNAME"],
            "sasl_plain_password": os.environ["KAFKA_SASL_PASSWORD"]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--binance-ws", required=True)
    p.add_argument("--binance-rest", required=True)
    p.add_argument("--kucoin-rest", required=True)
    p.add_argument("--exchanges", default="binance,kucoin")
    p.add_argument("--kafka", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--stats", required=True)
    p.add_argument("--kucoin-per-feed", type=int, default=300, help="cryptofeed refuses more per connection")
    args = p.parse_args()

    import cryptofeed.feed
    from cryptofeed import FeedHandler
    from cryptofeed.backends.kafka import TickerKafka
    from cryptofeed.backends.postgres import TickerPostgres
    from cryptofeed.connection import RestEndpoint, WebsocketEndpoint, WSAsyncConn
    from cryptofeed.defines import TICKER
    from cryptofeed.exchange import Exchange
    from cryptofeed.exchanges import Binance, KuCoin

    live = {"https://api.binance.com": args.binance_rest, "https://api.kucoin.com": args.kucoin_rest}

    def rebase(url: str) -> str:
        for old, new in live.items():
            if url.startswith(old):
                return new + url[len(old):]
        return url

    # KuCoin's constructor POSTs bullet-public to a hardcoded URL through the shared HTTPSync
    sync = Exchange.http_sync
    read, write = sync.read, sync.write
    sync.read = lambda address, *a, **kw: read(rebase(address), *a, **kw)
    sync.write = lambda address, *a, **kw: write(rebase(address), *a, **kw)
    Binance.websocket_endpoints = [WebsocketEndpoint(args.binance_ws)]
    Binance.rest_endpoints = [RestEndpoint(args.binance_rest, routes=Binance.rest_endpoints[0].routes)]
    KuCoin.rest_endpoints = [RestEndpoint(args.kucoin_rest, routes=KuCoin.rest_endpoints[0].routes)]

    class LoopbackWSAsyncConn(WSAsyncConn):
        """cryptofeed accepts only wss:// addresses; the simulator serves plain ws:// on loopback."""

        def __init__(self, address: str, *a, **kw):
            plain = address.startswith("ws://")
            super().__init__("wss://" + address[len("ws://"):] if plain else address, *a, **kw)
            if plain:
                self.address = address

    cryptofeed.feed.WSAsyncConn = LoopbackWSAsyncConn

    class CompactTopics:
        """cryptofeed 2.4.1 subscribes to `/market/ticker: A,B` (a space after the colon), which
        KuCoin tolerates and the simulator answers with 404 `topic ... is not found`. This
        connection wrapper removes that space on the wire; cryptofeed's subscribe logic is its own."""

        def __init__(self, conn):
            self._conn = conn

        def __getattr__(self, name):
            return getattr(self._conn, name)

        async def write(self, msg: str):
            return await self._conn.write(re.sub(r'("topic":\s*"/market/[A-Za-z0-9]+): ', r"\1:", msg))

    kucoin_subscribe = KuCoin.subscribe

    async def subscribe_compact(self, conn):
        return await kucoin_subscribe(self, CompactTopics(conn))

    KuCoin.subscribe = subscribe_compact

    class OneTopicTickerKafka(TickerKafka):
        """Stock TickerKafka writes to one topic per (exchange, symbol); the broker here does not
        auto-create topics, so everything goes to the bench's topic."""

        def topic(self, data: dict) -> str:
            return args.topic

    stats = {"received": 0}

    async def count(ticker, receipt_timestamp):
        stats["received"] += 1

    pg = dict(host=os.environ.get("PGHOST", "127.0.0.1"), port=int(os.environ.get("PGPORT", "5432")),
              user=os.environ.get("PGUSER"), pw=os.environ.get("PGPASSWORD"), db=os.environ.get("PGDATABASE"))
    kafka_cb = OneTopicTickerKafka(bootstrap_servers=args.kafka, **kafka_security())
    pg_cb = TickerPostgres(table=args.table, **pg)
    callbacks = {TICKER: [count, kafka_cb, pg_cb]}

    fh = FeedHandler(config={"log": {"filename": os.devnull, "level": "WARNING"}})
    exchanges = [e.strip() for e in args.exchanges.split(",") if e.strip()]
    if "binance" in exchanges:
        fh.add_feed(Binance(symbols=Binance.symbols(), channels=[TICKER], callbacks=callbacks))
    if "kucoin" in exchanges:
        symbols = KuCoin.symbols()
        for i in range(0, len(symbols), args.kucoin_per_feed):
            fh.add_feed(KuCoin(symbols=symbols[i:i + args.kucoin_per_feed], channels=[TICKER], callbacks=callbacks))

    async def report() -> None:
        while True:
            tmp = args.stats + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"received": stats["received"], "at": time.time()}, f)
            os.replace(tmp, args.stats)
            await asyncio.sleep(0.2)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.create_task(report())
    fh.run(start_loop=True, install_signal_handlers=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
