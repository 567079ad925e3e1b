"""`python -m cryptopipe.bench.extract_isolated SUFFIX <extract args...>`: the real extractor
(`streaming.extractor.cli.main`), writing to `<exchange>_raw_data<SUFFIX>` and
`pipeline_events<SUFFIX>` instead of the shared topics, so a benchmark run never mixes with the
running stack or with other tests. The transformer, loader and archiver take `--topic-suffix`
themselves; the extractor has no such option yet, so the two topic names it reads from
`common.topics` are rebound here before it starts. Nothing else of the extractor changes.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m cryptopipe.bench.extract_isolated SUFFIX binance|kucoin [options]", file=sys.stderr)
        return 2
    suffix, rest = argv[0], argv[1:]
    from common.topics import PIPELINE_EVENTS, raw_topic
    from streaming.extractor import cli, events, transport

    transport.raw_topic = lambda exchange: raw_topic(exchange) + suffix
    events.PIPELINE_EVENTS = PIPELINE_EVENTS + suffix
    return int(cli.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
