"""What the benchmark measures, and how:

- counts: the daemons' own Prometheus counters (rows the loader's INSERT really added, records the
  archiver uploaded, ticker objects the extractors received), scraped once a second;
- consumer lag: committed offsets of the bench's consumer groups against the topics' high
  watermarks (the same numbers AdminClient.list_consumer_group_offsets reports);
- commit time: `CommitClock` samples `pg_current_snapshot()` every `interval` seconds; a
  transaction id is committed by the first sample whose snapshot no longer shows it in progress.
  Each row carries its inserting transaction id (`xmin`), so receipt -> commit latency of a row is
  (first sample after its transaction committed) - received_at: an upper bound, at most
  `interval` late. `ingested_at` (the transaction's start, DEFAULT now()) gives the lower bound.
"""
from __future__ import annotations

import io
import math
import threading
import time
import urllib.request
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timezone

from confluent_kafka import TopicPartition


# --------------------------------------------------------------------------- prometheus text

def scrape(port: int, timeout: float = 2.0) -> dict[tuple[str, tuple], float]:
    """{(metric name, sorted label pairs): value} from http://127.0.0.1:port/metrics; {} if down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return parse_prometheus(text)


def parse_prometheus(text: str) -> dict[tuple[str, tuple], float]:
    out: dict[tuple[str, tuple], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, brace, labels = head.partition("{")
        pairs: list[tuple[str, str]] = []
        if brace:
            for part in labels.rstrip("}").split('",'):
                k, eq, v = part.partition("=")
                if eq:
                    pairs.append((k.strip(), v.strip().strip('"')))
        try:
            out[(name, tuple(sorted(pairs)))] = float(value)
        except ValueError:
            continue
    return out


def metric_sum(samples: dict, name: str, **labels: str) -> float:
    """Sum of `name` over the series whose labels include `labels`."""
    total = 0.0
    for (n, pairs), value in samples.items():
        if n != name:
            continue
        d = dict(pairs)
        if all(d.get(k) == v for k, v in labels.items()):
            total += value
    return total


# --------------------------------------------------------------------------- consumer lag

class LagProbe:
    """One consumer group on some topics: committed lag (sum over partitions of high watermark -
    committed offset) and the sum of the high watermarks (records written to the topics so far)."""

    def __init__(self, group: str, topics: list[str]):
        self.group = group
        self.topics = topics
        # a consumer that never subscribes does not join the group: it only reads its offsets
        from common.kafka import make_consumer

        self.consumer = make_consumer(group, {"log_level": 2})
        self.parts: list[TopicPartition] = []
        for t in topics:
            md = self.consumer.list_topics(t, timeout=10).topics.get(t)
            if md is not None:
                self.parts += [TopicPartition(t, p) for p in md.partitions]

    def sample(self) -> tuple[int, int] | None:
        """(committed lag, sum of high watermarks), or None when the broker did not answer."""
        try:
            committed = self.consumer.committed(self.parts, timeout=5)
            lag = high_sum = 0
            for tp in committed:
                _lo, hi = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5)
                # no commit yet: the bench's topics are new, so everything written counts
                base = tp.offset if tp.offset >= 0 else 0
                lag += max(0, hi - base)
                high_sum += hi
            return lag, high_sum
        except Exception:  # noqa: BLE001 - a missed sample is a gap in the series, not a failure
            return None

    def lag(self) -> int | None:
        s = self.sample()
        return None if s is None else s[0]

    def close(self) -> None:
        self.consumer.close()


def trend(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares slope of (t, y) points (units of y per second) and its standard error."""
    n = len(points)
    if n < 3:
        return None
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return None
    b = sum((t - mt) * (y - my) for t, y in points) / den
    a = my - b * mt
    resid = sum((y - a - b * t) ** 2 for t, y in points)
    return b, math.sqrt(resid / (n - 2) / den)


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t, y) points (units of y per second)."""
    tr = trend(points)
    return None if tr is None else tr[0]


# "Lag does not grow": over the window, the least-squares trend of a group's lag, in seconds of
# that group's inflow, adds at most this much per second (0.01: less than 0.6 s of feed per
# minute), or is not distinguishable from no trend at all (within two standard errors of 0, or
# less than two records over the window).
# A consumer keeping 99 % of its feed fails it over 60 s (+0.6 s of feed, a steady climb); the
# ripple of a batch consumer (about one poll of feed, sampled once a second) moves a 60-sample
# trend by ~0.002 s/s, and on short windows the standard error keeps that ripple from failing it.
GROWTH_BOUND_S_PER_S = 0.01
MIN_SUSTAINED_WINDOW_S = 60.0


def lag_verdict(points: list[tuple[float, float]], inflow_per_s: float,
                bound: float = GROWTH_BOUND_S_PER_S) -> dict:
    """The growth test of one group's lag series (records) against its inflow (records/s)."""
    values = [v for _, v in points]
    tr = trend(points)
    b, se = tr if tr is not None else (0.0, 0.0)
    growth = b / inflow_per_s if inflow_per_s > 0 else (0.0 if b <= 0 else math.inf)
    significant = b > 2 * se
    # a lag measured in records cannot be said to grow by less than two of them over the window
    visible = len(points) >= 2 and b * (points[-1][0] - points[0][0]) >= 2
    return {"max": max(values) if values else None, "last": values[-1] if values else None,
            "mean": sum(values) / len(values) if values else None, "samples": len(values),
            "inflow_records_per_s": inflow_per_s, "slope_records_per_s": b, "slope_se": se,
            "growth_s_per_s": growth, "bound_s_per_s": bound, "significant": significant,
            "grows": growth > bound and significant and visible}


def rss_trend(samples: list[tuple[float, int]]) -> dict:
    """Peak, first/last 10 % means (MB) and least-squares slopes (MB per minute) of RSS samples,
    over the whole window and over its second half (a bounded buffer filling up early in the
    window, e.g. librdkafka's prefetch queue, shows in the first slope, not in the second)."""
    if not samples:
        return {"peak_rss_mb": None, "rss_first_mb": None, "rss_last_mb": None, "rss_slope_mb_per_min": None,
                "rss_slope_last_half_mb_per_min": None}
    rss = [r for _, r in samples]
    tenth = max(1, len(rss) // 10)
    mb = [(t, r / 2**20) for t, r in samples]
    whole, half = slope(mb), slope(mb[len(mb) // 2:])
    return {"peak_rss_mb": max(rss) / 2**20, "rss_first_mb": sum(rss[:tenth]) / tenth / 2**20,
            "rss_last_mb": sum(rss[-tenth:]) / tenth / 2**20,
            "rss_slope_mb_per_min": None if whole is None else whole * 60,
            "rss_slope_last_half_mb_per_min": None if half is None else half * 60,
            # every sample (1 s, or 10 s in a soak): the flatness is in the shape, not two means
            "rss_mb_series": [round(r / 2**20, 1) for r in rss]}


# --------------------------------------------------------------------------- commit clock

def parse_snapshot(text: str) -> tuple[int, int, frozenset[int]]:
    """'xmin:xmax:xip1,xip2' -> (xmin, xmax, in-progress ids)."""
    xmin, xmax, xip = text.split(":")
    return int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x)


@dataclass
class CommitClock:
    """Samples pg_current_snapshot() on its own connection until stopped."""
    dsn: str | None = None
    interval: float = 0.02
    samples: list[tuple[datetime, int, int, frozenset]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "CommitClock":
        from common.db import connect

        self._conn = connect(self.dsn)
        self._conn.autocommit = True
        self._thread = threading.Thread(target=self._run, name="commit-clock", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with self._conn.cursor() as cur:
            while not self._stop.is_set():
                cur.execute("SELECT clock_timestamp(), pg_current_snapshot()::text")
                at, snap = cur.fetchone()
                xmin, xmax, xip = parse_snapshot(snap)
                self.samples.append((at, xmin, xmax, xip))
                self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self._conn.close()

    def committed_at(self, xid: int) -> datetime | None:
        """Time of the first sample in which `xid` is no longer running (None: not seen finish)."""
        # xmin only grows: every sample after the first with xmin > xid has it finished; before
        # that, check xmax/xip sample by sample from the first whose xmax passed it
        if getattr(self, "_xmaxes_n", -1) != len(self.samples):
            self._xmaxes = [s[2] for s in self.samples]
            self._xmaxes_n = len(self.samples)
        i = bisect_left(self._xmaxes, xid + 1)  # first sample whose snapshot began after xid was assigned
        for at, xmin, xmax, xip in self.samples[i:]:
            if xid < xmin or (xid < xmax and xid not in xip):
                return at
        return None

    def resolution_ms(self) -> float | None:
        if len(self.samples) < 2:
            return None
        span = (self.samples[-1][0] - self.samples[0][0]).total_seconds()
        return 1000.0 * span / (len(self.samples) - 1)


# --------------------------------------------------------------------------- latency from Postgres

def _xid32(x: int) -> int:
    return x & 0xFFFFFFFF


def latency_percentiles(conn, clock: CommitClock, table: str, where: str, params: tuple,
                        received_expr: str = "received_at", start_expr: str | None = "ingested_at") -> dict:
    """Receipt -> commit percentiles (ms) of the rows of `table` matching `where`.

    `table`, `where` and the expressions are the bench's own constant SQL; values go in `params`.
    """
    with conn.cursor() as cur:
        cur.execute(f"SELECT DISTINCT xmin::text::bigint FROM {table} WHERE {where}", params)
        xids = [r[0] for r in cur.fetchall()]
        # snapshots carry 64-bit ids; xmin is the 32-bit id (one epoch is plenty on a bench database)
        full = {}
        epoch_base = clock.samples[-1][2] & ~0xFFFFFFFF if clock.samples else 0
        for x in xids:
            full[x] = epoch_base | x
        commits = []
        unseen = 0
        for x, fx in full.items():
            at = clock.committed_at(fx)
            if at is None:
                unseen += 1
                continue
            commits.append((x, at))
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS bench_commit_times (xid bigint PRIMARY KEY, at timestamptz)")
        cur.execute("TRUNCATE bench_commit_times")
        buf = io.StringIO("".join(f"{x}\t{at.isoformat()}\n" for x, at in commits))
        cur.copy_expert("COPY bench_commit_times (xid, at) FROM STDIN", buf)
        start_cols = ""
        if start_expr:
            start_cols = (f", percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
                          f"(ORDER BY extract(epoch FROM {start_expr} - {received_expr}))")
        cur.execute(
            f"""SELECT count(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
                       (ORDER BY extract(epoch FROM c.at - {received_expr})),
                       max(extract(epoch FROM c.at - {received_expr})) {start_cols}
                FROM {table} k JOIN bench_commit_times c ON c.xid = k.xmin::text::bigint
                WHERE {where}""", params)
        row = cur.fetchone()
    n, pcts, worst = row[0], row[1], row[2]
    out = {"rows": n, "transactions": len(xids), "transactions_unseen": unseen,
           "clock_resolution_ms": clock.resolution_ms()}
    if n and pcts:
        out.update({"p50_ms": float(pcts[0]) * 1000, "p95_ms": float(pcts[1]) * 1000,
                    "p99_ms": float(pcts[2]) * 1000, "max_ms": float(worst) * 1000})
    if start_expr and n and row[3]:
        out.update({"txn_start_p50_ms": float(row[3][0]) * 1000, "txn_start_p95_ms": float(row[3][1]) * 1000,
                    "txn_start_p99_ms": float(row[3][2]) * 1000})
    return out


class Sampler:
    """Runs `fn(now)` every `interval` seconds in a thread until stopped."""

    def __init__(self, fn, interval: float = 1.0):
        self.fn = fn
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.fn(time.monotonic())
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def measure_window(clock: CommitClock, procs: list, infra, sample, duration: float, sample_interval: float,
                   log, label: str) -> tuple[datetime, datetime]:
    """The measured window, the same for every system: start the commit clock, open the CPU/RSS
    marks of `procs` and of the shared services (`infra`), run `sample(now)` every
    `sample_interval` seconds for `duration` seconds, close the marks. Returns (start, end), UTC.

    The clock keeps running after a normal return (commits of the window's rows come during the
    drain; the caller stops it). If anything goes wrong in the window, the sampler and the clock
    are stopped here before the error propagates.
    """
    clock.start()
    sampler = None
    try:
        start = datetime.now(timezone.utc)
        for p in procs:
            p.mark_start()
        infra.mark_start()
        sampler = Sampler(sample, sample_interval).start()
        log(f"{label}: measuring {duration:.0f}s from {start:%H:%M:%S}Z")
        time.sleep(duration)
        sampler.stop()
        end = datetime.now(timezone.utc)
        for p in procs:
            p.mark_end()
        infra.mark_end()
    except BaseException:
        if sampler is not None:
            sampler.stop()
        clock.stop()
        raise
    return start, end
