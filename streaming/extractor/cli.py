"""`cryptopipe extract binance|kucoin [options]` - one extractor process (supervisord programs
`extract-binance`, `extract-kucoin`). Logs to stderr, one line per event; SIGTERM closes the
sockets, flushes the producer and the spool, and exits 0."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from common.exchanges import EXCHANGES, plug
from common.kafka import make_producer
from common.settings import get_settings, metrics_port

from .events import Events
from .metrics import Metrics
from .runner import Extractor
from .sink import KafkaSink
from .spool import Spool, default_dir as default_spool_dir
from .transport import Options

log = logging.getLogger("cryptopipe.extractor")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cryptopipe extract", description=__doc__.split("\n")[0])
    p.add_argument("exchange", choices=EXCHANGES)
    p.add_argument("--symbols", type=_csv, default=None,
                   help="canonical symbols (BTC-USDT,...); default $SYMBOLS, empty = the all-market stream")
    p.add_argument("--streams", "--topics", dest="extra", type=_csv, default=[], metavar="NAMES",
                   help="extra subscriptions in the exchange's own words (binance streams: btcusdt@trade,...; "
                        "kucoin topics: /market/match:BTC-USDT,...)")
    p.add_argument("--per-connection", type=int, default=0,
                   help="subscriptions per connection (default and most: the exchange's limit, e.g. binance "
                        "1024 streams, kucoin 300 topics)")
    p.add_argument("--stall-seconds", type=float, default=15.0, help="no data frame for this long = stalled")
    p.add_argument("--rotate-after", type=float, default=23 * 3600.0,
                   help="seconds before a connection is replaced (the exchanges cut them at 24 h)")
    p.add_argument("--rotation-overlap", type=float, default=5.0,
                   help="seconds the old connection keeps reading after its replacement delivers")
    p.add_argument("--heartbeat-seconds", type=float, default=5.0)
    p.add_argument("--spool-dir", default=None, help="default $CRYPTOPIPE_HOME/spool/<exchange>")
    p.add_argument("--spool-max-bytes", type=int, default=1 << 30)
    p.add_argument("--metrics-port", type=int, default=None,
                   help="0 = disabled; default the exchange's (binance 9101, kucoin 9102), moved by the port offset")
    p.add_argument("--backoff-base", type=float, default=0.5)
    p.add_argument("--backoff-cap", type=float, default=30.0)
    p.add_argument("--linger-ms", type=int, default=5, help="producer linger (the micro-batching bound)")
    p.add_argument("--batch-linger-ms", type=float, default=20.0,
                   help="exchanges that send a frame per tick (kucoin): how long a frame may wait to share a "
                        "raw record with the next ones (0 = one record per frame)")
    p.add_argument("--topic-suffix", default="",
                   help="write to <exchange>_raw_data<SUFFIX> and pipeline_events<SUFFIX> (private runs)")
    p.add_argument("--label", default="", help="tag in connection ids (letters, digits, dashes)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    settings = get_settings()
    exchange = args.exchange
    the_plug = plug(exchange)
    symbols = args.symbols if args.symbols is not None else list(settings.symbols)
    shards = the_plug.plan_shards(symbols, args.extra, args.per_connection or the_plug.MAX_PER_CONNECTION)
    metrics = Metrics(exchange)
    spool = Spool(args.spool_dir or default_spool_dir(exchange), max_bytes=args.spool_max_bytes)
    producer = make_producer({"linger.ms": args.linger_ms, "client.id": f"extract-{exchange}"})
    events_box: list[Events] = []
    # process-level events (spool) carry a conn_id naming the process, not a connection
    proc_id = f"{exchange[:2]}-{args.label}-spool" if args.label else f"{exchange[:2]}-spool"
    sink = KafkaSink(producer, spool, metrics,
                     on_spool_full=lambda: events_box[0].emit("spool_full", proc_id, "spool_full",
                                                              spool_bytes=spool.depth_bytes),
                     on_spool_drained=lambda n: events_box[0].emit("spool_drained", proc_id, records=n))
    events = Events(exchange, sink, metrics, topic_suffix=args.topic_suffix)
    events_box.append(events)
    options = Options(stall_s=args.stall_seconds, rotate_after_s=args.rotate_after,
                      rotation_overlap_s=args.rotation_overlap, batch_linger_s=args.batch_linger_ms / 1000,
                      urls={name: getattr(settings, name) for name in the_plug.url_settings()},
                      topic_suffix=args.topic_suffix)
    extractor = Extractor(exchange, shards, sink, events, metrics, options, heartbeat_s=args.heartbeat_seconds,
                          scopes=the_plug.shard_scopes(symbols, shards),
                          backoff={"base_s": args.backoff_base, "cap_s": args.backoff_cap}, label=args.label)
    return extractor, sink


async def _amain(args: argparse.Namespace) -> int:
    extractor, sink = build(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, extractor.stop.set)
    try:
        await extractor.run()
    finally:
        left = sink.close(timeout=3.0)
        log.info("stopped (%d delivered, %d saved to the spool, spool %d bytes)", sink.delivered, left,
                 sink.spool.depth_bytes)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    default_port = metrics_port(plug(args.exchange).EXTRACTOR_METRICS_PORT)
    port = default_port if args.metrics_port is None else args.metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr="127.0.0.1")
    return asyncio.run(_amain(args))
