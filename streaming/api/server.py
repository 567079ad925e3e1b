"""`cryptopipe serve [--host H] [--port P]`: the prices server under uvicorn (supervisord
program `api`). Host and port default to the settings API_HOST / API_PORT (127.0.0.1:8000; the
local stack writes API_PORT moved by CRYPTOPIPE_PORT_OFFSET into stack.env)."""
from __future__ import annotations

import argparse
import logging


def main(argv: list[str]) -> int:
    from common.settings import get_settings

    s = get_settings()
    p = argparse.ArgumentParser(prog="cryptopipe serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=s.api_host)
    p.add_argument("--port", type=int, default=s.api_port)
    p.add_argument("--topic-suffix", default="", help="read <exchange>_transformed_data<SUFFIX> (benchmarks)")
    p.add_argument("--no-tail", action="store_true", help="REST only: do not read Kafka")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from streaming.api.app import create_app

    app = create_app(s, tail=not args.no_tail, topic_suffix=args.topic_suffix)
    # incoming websocket messages are ignored: keep them tiny; HTTP connections beyond the
    # websocket limit plus some headroom get 503 from uvicorn itself
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), ws="websockets-sansio",
                ws_max_size=4096, ws_max_queue=4, limit_concurrency=s.api_max_connections + 200,
                access_log=False, timeout_graceful_shutdown=5)
    return 0
