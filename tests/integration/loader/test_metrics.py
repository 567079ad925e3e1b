"""Each sink daemon serves /metrics on 127.0.0.1 with records, batch sizes, lag and DLQ counts."""
import socket
import urllib.request
import uuid

import pytest

from common.models import Tick
from tests.integration.sinks_util import (stop_leftover_daemons,  # noqa: F401
                                          Daemon, create_topics, delete_topics, new_suffix, produce, ticks_records,
                                          wait_until)

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def test_loader_metrics_count_records_batches_and_dlq(stack, tmp_path):
    from decimal import Decimal

    suffix = new_suffix()
    names = create_topics(suffix)
    try:
        topic = "kucoin_transformed_data" + suffix
        sym = f"M{uuid.uuid4().hex[:7].upper()}-USDT"
        good = [Tick("kucoin", sym, 1_795_000_000_000 + i, Decimal("1.5"), 1_795_000_000_000_000_000, sequence=i)
                for i in range(10)]
        records = [(None, v, h) for _, v, h in ticks_records(good, partitions=1, per_record=1)]  # 10 records
        produce(topic, records + [(b"x", b"not ticks", None)], partition=0)
        port = free_port()
        d = Daemon(["load", "--group", "loader-m-" + uuid.uuid4().hex, "--topic-suffix", suffix, "--metrics-port", str(port),
                    "--retention-days", "0"], tmp_path, "load-metrics").start()
        wait_until(lambda: 'cryptopipe_consumer_dlq_total{component="load"' in scrape(port), 60, "metrics", [d])
        text = scrape(port)
        assert f'cryptopipe_consumer_records_total{{component="load",topic="{topic}"}} 11.0' in text
        assert 'cryptopipe_consumer_written_total{component="load",kind="ticks"} 10.0' in text
        assert f'cryptopipe_consumer_dlq_total{{component="load",topic="kucoin_dlq{suffix}"}} 1.0' in text
        assert 'cryptopipe_consumer_batch_size_count{component="load"}' in text
        assert 'cryptopipe_consumer_up{component="load"} 1.0' in text
        assert d.term() == 0
    finally:
        delete_topics(names)
