"""The one S3 client factory and the one S3 key builder."""
from __future__ import annotations

import re
from datetime import datetime, timezone

from common.settings import get_settings
from common.topics import EXCHANGES

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def make_s3_client(**overrides):
    import boto3
    from botocore.config import Config

    s = get_settings()
    return boto3.client(
        "s3",
        endpoint_url=overrides.pop("endpoint_url", s.s3_endpoint_url),
        aws_access_key_id=overrides.pop("aws_access_key_id", s.aws_access_key_id),
        aws_secret_access_key=overrides.pop("aws_secret_access_key", s.aws_secret_access_key),
        region_name=s.s3_region,
        config=overrides.pop("config", Config(s3={"addressing_style": "path"},
                                              retries={"max_attempts": 3, "mode": "standard"},
                                              connect_timeout=5, read_timeout=30)),
        **overrides,
    )


def _check_exchange(exchange: str) -> str:
    if exchange not in EXCHANGES:
        raise ValueError(f"unknown exchange {exchange!r:.40}")
    return exchange


def _check_part(value: str, what: str) -> str:
    if not _SAFE.match(value) or value in (".", ".."):
        raise ValueError(f"unsafe {what} for an S3 key: {value!r:.80}")
    return value


def raw_archive_key(exchange: str, topic: str, partition: int, first_offset: int, first_received: datetime) -> str:
    """`raw/exchange=<ex>/date=YYYY-MM-DD/hour=HH/<topic>+<partition>+<first_offset>.jsonl.gz`.

    A pure function of Kafka coordinates and the first record's receive time, so a retry
    after a crash writes the same key.
    """
    t = first_received.astimezone(timezone.utc)
    return (f"raw/exchange={_check_exchange(exchange)}/date={t:%Y-%m-%d}/hour={t:%H}/"
            f"{_check_part(topic, 'topic')}+{int(partition)}+{int(first_offset)}.jsonl.gz")


def backfill_response_key(exchange: str, symbol: str, interval: str, start: datetime, end: datetime) -> str:
    """`backfill/exchange=<ex>/symbol=<SYM>/date=YYYY-MM-DD/<interval>_<start>_<end>.json.gz`."""
    from common.symbols import check_canonical

    s, e = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
    return (f"backfill/exchange={_check_exchange(exchange)}/symbol={check_canonical(symbol)}/date={s:%Y-%m-%d}/"
            f"{_check_part(interval, 'interval')}_{s:%Y%m%dT%H%M}_{e:%Y%m%dT%H%M}.json.gz")
