"""The whole pipeline on the real stack, fed by the simulator, and the invariants every
end-to-end and fault scenario asserts afterwards.

`live_pipeline` (session scope) brings the stack up in SOURCE=sim mode: supervisord runs the
simulator and the five daemons with their production settings (default consumer groups), exactly
as `make up SOURCE=sim` does, only with a smaller simulated market so backfills stay short.

Invariants, counted against the simulator's ground truth (never the pipeline's bookkeeping):
- ticks: every tick the simulator sent (its own log, per socket) is in `ticks` exactly once with
  its exact price, or inside a gap detection recorded (which holds every dead-lettered frame's
  minute); no stored row matches nothing sent; every frame the simulator corrupted is in the DLQ;
- archive: every raw record is in S3 exactly once per offset;
- candles: after gap detection and backfill, every minute of every gap is in `candles_1m`
  with the true candle; no minute of the window is missing; after reconciliation
  (`PipelineHandle.reconcile`), every minute of the window, for every trading symbol of both
  exchanges, is the simulator's true candle (OHLC and volume);
- processes: every supervisord program is RUNNING.

Why one module of ~620 lines: every invariant check (ticks against the simulator's log, the
archive per offset, candles against the truth, settling, gap detection and reconciliation runs)
is a method of PipelineHandle and shares its stack context, simulator control and figures; split
by invariant, each piece would take the whole handle anyway.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import signal
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from backfill.validation import ceil_minute, floor_minute

E2E_SIM_ARGS = "--symbols 12 --rate 240 --truth-max 3000000 --seed 7"
# S3 objects uploaded after 10 s instead of 60: every `settle(archive=True)` waits for the archiver's
# upload and commit, and the suite settles a dozen times
# and every symbol streamed, whatever SYMBOLS the stack remembers from a developer's `make up`
# ("" forgets it for the run; the fixture puts the remembered values back afterwards)
E2E_ENV = {"ARCHIVE_MAX_AGE_SECONDS": "10", "SYMBOLS": ""}
EXCHANGES = ("binance", "kucoin")
UTC = timezone.utc


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Figures:
    """What a scenario prints: sent, stored, duplicates, minutes missing, minutes filled."""
    scenario: str
    values: dict = field(default_factory=dict)

    def add(self, **kw):
        self.values.update(kw)

    def print(self):
        line = " ".join(f"{k}={v}" for k, v in self.values.items())
        print(f"\nFIGURES {self.scenario}: {line}")
        # every run keeps its figures (scripts/reliability_table.py turns them into the README table)
        from common.settings import stack_home

        out = os.environ.get("CRYPTOPIPE_FIGURES") or str(stack_home() / "figures.jsonl")
        with open(out, "a") as f:
            f.write(json.dumps({"scenario": self.scenario, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                                **self.values}, default=str) + "\n")


class PipelineHandle:
    def __init__(self, ctx, sim):
        self.ctx = ctx
        self.sim = sim
        self.detected_until: datetime | None = None     # set by fill_gaps, used by check_candles
        self.reconciled_until: datetime | None = None   # set by reconcile, used by check_candles
        self.only_symbols: list[str] | None = None      # accounting restricted to these (private chains)

    # --- processes
    def rpc(self):
        from cryptopipe.stack import supervisor

        return supervisor.rpc(self.ctx).supervisor

    def info(self, program: str) -> dict:
        from cryptopipe.stack.supervisor import full_name

        return self.rpc().getProcessInfo(full_name(self.ctx, program))

    def kill9(self, program: str) -> int:
        """SIGKILL the program's process; supervisord restarts it. Returns the old pid."""
        pid = self.info(program)["pid"]
        assert pid, f"{program} is not running"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: self.info(program)["pid"] not in (0, pid) and self.info(program)["statename"] == "RUNNING",
                 60, f"supervisord to restart {program}")
        return pid

    def stop(self, program: str) -> None:
        from tests.plugins.stack import stop_program

        stop_program(program)

    def start(self, program: str) -> None:
        from tests.plugins.stack import start_program

        start_program(program)

    def all_running(self, except_=()) -> dict:
        """The programs that should run and do not (`except_`: stopped on purpose by the scenario)."""
        from cryptopipe.stack.kafka import Kafka
        from cryptopipe.stack.supervisor import processes

        states = {i["name"]: i["statename"] for i in self.rpc().getAllProcessInfo()}
        # every broker of a cluster, every process of a daemon run several times (`load_01`)
        programs = (*Kafka().programs(self.ctx), "postgres", "s3proxy", "sim", "extract-binance", "extract-kucoin",
                    "transform", "load", "archive")
        wanted = [p for program in programs if program not in except_
                  for p in processes(self.ctx, program) if p not in except_]
        return {p: states.get(p) for p in wanted if states.get(p) != "RUNNING"}

    def wait_streaming(self, pg, timeout: float = 120) -> None:
        """Both exchanges deliver again (a fresh tick stored): scenarios start from a live stream,
        not from the backoff an earlier fault left behind."""
        def fresh():
            with pg.cursor() as cur:
                cur.execute("""SELECT count(DISTINCT exchange) FROM ticks
                                WHERE received_at > now() - interval '5 seconds'""")
                return cur.fetchone()[0] == len(EXCHANGES) or None
        wait_for(fresh, timeout, "both exchanges streaming")
        # a scenario starts in whole streamed minutes, after the minute the first session began in
        # (which the stream saw only in part)
        with pg.cursor() as cur:
            cur.execute("SELECT max(first) FROM (SELECT min(coalesce(subscribed_at, connected_at)) AS first "
                        "FROM stream_sessions GROUP BY exchange) f")
            first = cur.fetchone()[0]
        if first is not None:
            begins = floor_minute(first) + timedelta(minutes=1)
            wait = (begins - datetime.now(UTC)).total_seconds()
            if wait > 0:
                time.sleep(wait + 0.2)

    # --- Kafka progress
    @staticmethod
    def end_offsets(topics) -> dict:
        from confluent_kafka import TopicPartition

        from common.kafka import make_consumer

        c = make_consumer(f"probe-{uuid.uuid4()}")
        out = {}
        for topic in topics:
            for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
                out[(topic, p)] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        c.close()
        return out

    @staticmethod
    def committed(group: str, keys) -> dict:
        from confluent_kafka import TopicPartition

        from common.kafka import make_consumer

        from confluent_kafka import KafkaException

        c = make_consumer(group)
        try:
            parts = c.committed([TopicPartition(t, p) for t, p in keys], timeout=10)
        except KafkaException:  # coordinator moving (e.g. a broker restart): not known yet
            return {}
        finally:
            c.close()
        return {(tp.topic, tp.partition): tp.offset for tp in parts}

    def wait_consumed(self, group: str, targets: dict, timeout: float) -> None:
        def done():
            got = self.committed(group, targets)
            behind = {k: (got.get(k), v) for k, v in targets.items() if v > 0 and (got.get(k) or -1) < v}
            return not behind or None
        wait_for(done, timeout, f"consumer group {group} to commit {targets}")

    @staticmethod
    def spool_bytes(exchange: str) -> float | None:
        """The bytes `exchange`'s extractor holds in its spool (what Kafka did not acknowledge in
        time): from its /metrics while it runs; from the spool on disk when it is stopped (what a
        restart would replay). None when neither can be read."""
        import urllib.request

        from common.exchanges import plug
        from common.settings import metrics_port
        from streaming.extractor.spool import Spool, default_dir

        url = f"http://127.0.0.1:{metrics_port(plug(exchange).EXTRACTOR_METRICS_PORT)}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=3).read().decode()
        except OSError:
            directory = default_dir(exchange)
            return float(Spool(directory).depth_bytes) if directory.is_dir() else 0.0
        for line in text.splitlines():
            if line.startswith("cryptopipe_extractor_spool_bytes{") and f'exchange="{exchange}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait_spools_drained(self, timeout: float) -> None:
        """Every record an extractor spooled while Kafka was not acknowledging (a broker lost, a
        partition's leader moving) has been produced: only then do the topics' ends hold it. A
        stopped extractor counts by the spool it left on disk."""
        last: dict[str, float | None] = {}

        def drained():
            last.update({ex: self.spool_bytes(ex) for ex in EXCHANGES})
            return all(v == 0 for v in last.values()) or None
        try:
            wait_for(drained, timeout, "the extractors' spools to drain into Kafka")
        except AssertionError as e:
            raise AssertionError(f"{e}; spooled bytes per exchange: {last}") from None

    def settle(self, timeout: float = 120, archive: bool = False) -> None:
        """Wait until everything produced so far has gone through transform and load (and the
        archive, when asked). Offsets are committed only after the durable write they cover."""
        from common.topics import DLQ_TOPICS, PIPELINE_EVENTS, RAW_TOPICS, TRANSFORMED_TOPICS

        time.sleep(1.0)
        self.wait_spools_drained(timeout)
        raw = self.end_offsets(RAW_TOPICS)
        self.wait_consumed("transformer", raw, timeout)
        # the dead letters too: the loader records them for gap detection
        self.wait_consumed("loader", self.end_offsets(TRANSFORMED_TOPICS + (PIPELINE_EVENTS,) + DLQ_TOPICS), timeout)
        if archive:
            self.wait_consumed("archiver", raw, timeout)

    # --- the invariants
    def wait_sessions_settled(self, pg, timeout: float = 90) -> None:
        """Every session is either alive (a fresh heartbeat) or known to have ended (a disconnect,
        or a heartbeat older than detection's `stale_after`): a process killed with -9 reports no
        disconnect, and until its session goes stale, detection takes it as covering up to now."""
        from backfill.gaps import STALE_AFTER

        def settled():
            with pg.cursor() as cur:
                cur.execute("""SELECT count(*) FROM stream_sessions WHERE disconnected_at IS NULL
                               AND last_seen_at < now() - interval '12 seconds' AND last_seen_at >= now() - %s""",
                            (STALE_AFTER,))
                return cur.fetchone()[0] == 0 or None
        wait_for(settled, timeout, "every silent session to go stale")

    def record_gaps(self, pg, until_ms: int) -> None:
        """Run gap detection once it can see every minute up to the end of `until_ms`'s minute, as
        crypto_gap_detection would: the losses it finds become recorded gaps (the accounting's
        'explained'). Records only; fill_gaps fills."""
        from backfill import gaps

        need = ceil_minute(_at(until_ms)) + self.DETECT_SETTLE
        wait = (need - datetime.now(UTC)).total_seconds()
        if wait > 0:
            time.sleep(wait + 0.2)
        self.wait_sessions_settled(pg)
        listed = {ex: self.trading_symbols(ex) for ex in EXCHANGES}
        gaps.detect_gaps(now=datetime.now(UTC), settle=self.DETECT_SETTLE, lookback=timedelta(hours=2), listed=listed)

    def stored_counts(self, pg, exchange: str, since_ms: int, until_ms: int) -> dict:
        """{(symbol, event_ms, sequence): (price, rows)} of every row in `ticks` with an exchange time
        in [since, until) (of `only_symbols` when set): counted, not joined on the key, so a doubled
        row shows as rows > 1 (price None when a tick's rows disagree)."""
        with pg.cursor() as cur:
            cur.execute("""SELECT symbol, (extract(epoch FROM event_time) * 1000)::bigint, sequence,
                                  min(price)::text, max(price)::text, count(*)
                             FROM ticks WHERE exchange = %s
                              AND event_time >= timestamptz 'epoch' + %s * interval '1 millisecond'
                              AND event_time < timestamptz 'epoch' + %s * interval '1 millisecond'
                              AND (%s::text[] IS NULL OR symbol = ANY(%s::text[]))
                            GROUP BY 1, 2, 3""", (exchange, since_ms, until_ms, self.only_symbols, self.only_symbols))
            return {(s, e, q): ((lo if lo == hi else None), n) for s, e, q, lo, hi, n in cur.fetchall()}

    @staticmethod
    def recorded_gaps(pg, exchange: str, since_ms: int, until_ms: int) -> list[tuple]:
        with pg.cursor() as cur:
            cur.execute("""SELECT symbol, (extract(epoch FROM gap_start) * 1000)::bigint,
                                  (extract(epoch FROM gap_end) * 1000)::bigint FROM gaps
                            WHERE exchange = %s AND gap_end > timestamptz 'epoch' + %s * interval '1 millisecond'
                              AND gap_start < timestamptz 'epoch' + %s * interval '1 millisecond'""",
                        (exchange, since_ms - 60_000, until_ms + 60_000))
            return cur.fetchall()

    def dead_lettered_frames(self, exchange: str, since_ms: int) -> tuple[int, int]:
        """(corrupted frames the simulator logged sending since `since_ms`, how many of them are in
        the exchange's DLQ, byte for byte as far as the log kept them)."""
        from confluent_kafka import TopicPartition

        from common.kafka import make_consumer

        wanted = [e for e in self.sim.fault_log() if e.get("fault") in ("malformed_sent", "truncated_sent")
                  and e.get("ms", 0) >= since_ms and e.get("conn_id", "").startswith(exchange[0])]
        if not wanted:
            return 0, 0
        prefixes = [e["frame"].encode() for e in wanted]
        c = make_consumer(f"probe-dlq-{uuid.uuid4()}")
        topic = f"{exchange}_dlq"
        parts = [TopicPartition(topic, p, 0) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
        c.assign(parts)
        values, done = [], {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(ends) and time.monotonic() < deadline:
            for m in c.consume(5000, timeout=0.5):
                if not m.error():
                    values.append(m.value() or b"")
            done |= {tp.partition for tp in c.position(parts) if tp.offset >= ends[tp.partition]}
        c.close()
        found = sum(1 for pre in prefixes if any(v.startswith(pre) for v in values))
        return len(wanted), found

    def check_ticks(self, pg, since_ms: int, until_ms: int, figures: Figures) -> None:
        """Count against the exchange, not against the pipeline's bookkeeping. For each exchange,
        over ticks whose exchange time is in [since, until):
        - sent: every distinct tick the simulator wrote on any socket (its own log, per socket);
        - stored: rows counted in `ticks`;
        - extra: stored rows that match nothing sent (a fabricated tick, a wrong price) plus every
          row beyond the first of a tick (a doubled one);
        - explained: sent, not stored, and inside a gap detection recorded for its symbol (or the
          whole exchange) - which includes the minutes of every dead-lettered frame; and every
          frame the simulator corrupted must be in the DLQ;
        - unexplained = sent - stored - explained: must be 0, as must extra."""
        counts = {}
        for exchange in EXCHANGES:
            rows = self.sim.truth(exchange=exchange, since_ms=since_ms, until_ms=until_ms - 1, by="event")
            sent: dict[tuple, str] = {}
            sockets: set[str] = set()
            for r in rows:
                sent.setdefault((r["symbol"], int(r["event_ms"]), int(r["sequence"] or 0)), r["price"])
                sockets.add(r["conn_id"])
            stored = self.stored_counts(pg, exchange, since_ms, until_ms)
            counts[exchange] = (sent, sockets, stored, [k for k in sent if k not in stored])
        if any(missing for *_, missing in counts.values()):
            self.record_gaps(pg, until_ms)         # losses must be on record: detection's view of them
        for exchange, (sent, sockets, stored, missing) in counts.items():
            def matches(key, price) -> bool:
                return key in sent and price is not None and Decimal(price) == Decimal(sent[key])
            extra = [k for k, (price, n) in stored.items() if not matches(k, price) or n > 1]
            extra_rows = sum(n - (1 if matches(k, price) else 0) for k, (price, n) in stored.items() if k in extra)
            gaps = self.recorded_gaps(pg, exchange, since_ms, until_ms) if missing else []

            def in_gap(key) -> bool:
                symbol, event_ms, _ = key
                return any((g_sym is None or g_sym == symbol) and g_lo <= event_ms < g_hi for g_sym, g_lo, g_hi in gaps)
            unexplained = [k for k in missing if not in_gap(k)]
            corrupted, in_dlq = self.dead_lettered_frames(exchange, since_ms - 5000)
            unrecorded = self.sockets_without_session(pg, exchange, since_ms, until_ms)
            figures.add(**{f"{exchange}_sent": len(sent), f"{exchange}_sockets": len(sockets),
                           f"{exchange}_stored": sum(n for _, n in stored.values()), f"{exchange}_extra": extra_rows,
                           f"{exchange}_explained": len(missing) - len(unexplained),
                           f"{exchange}_unexplained": len(unexplained),
                           f"{exchange}_corrupt_frames": corrupted, f"{exchange}_corrupt_frames_in_dlq": in_dlq,
                           f"{exchange}_sockets_without_session": len(unrecorded)})
            assert sent, f"{exchange}: the simulator sent nothing in the window"
            assert not extra, f"{exchange}: {extra_rows} stored rows match nothing sent once, e.g. {extra[:5]}"
            assert not unexplained, (f"{exchange}: {len(unexplained)} ticks sent, not stored, in no DLQ record or "
                                     f"recorded gap, e.g. {sorted(unexplained)[:5]}")
            assert in_dlq == corrupted, f"{exchange}: {corrupted - in_dlq} corrupted frames are not in the DLQ"

    def sockets_without_session(self, pg, exchange: str, since_ms: int, until_ms: int) -> list[dict]:
        """Sockets the simulator served data on in the window (its log) whose client connection id
        (the X-Cryptopipe-Conn-Id header) no `stream_sessions` row holds. A figure, not an invariant:
        a socket whose session was never recorded (an extractor killed as it connected) claims no
        coverage, so its time is a gap and gets backfilled; nothing is lost that way."""
        served = [c for c in self.sim.connections(exchange, since_ms=since_ms, until_ms=until_ms)
                  if c.get("ticks_sent") and c.get("client_conn_id")]
        with pg.cursor() as cur:
            cur.execute("SELECT conn_id FROM stream_sessions WHERE conn_id = ANY(%s)",
                        ([c["client_conn_id"] for c in served],))
            known = {r[0] for r in cur.fetchall()}
        return [c for c in served if c["client_conn_id"] not in known]

    def trading_symbols(self, exchange: str) -> set[str]:
        return {x["symbol"] for x in self.sim.symbols(exchange) if x.get("status") == "TRADING"}

    DETECT_SETTLE = timedelta(seconds=5)

    def fill_gaps(self, figures: Figures, since_ms: int | None = None, until_ms: int | None = None) -> list:
        """Run gap detection and backfill every open gap of this market, as crypto_gap_detection
        would. (Gaps of symbols this simulator does not list belong to other tests' data.)

        With the scenario's [since, until): detection waits until it can see every whole minute
        before `until`, and at least the scenario's first minute, so check_candles has closed,
        detected minutes to check (it checks only what detection could see)."""
        from backfill import gaps

        if since_ms is not None and until_ms is not None:
            need = max(floor_minute(_at(until_ms)), floor_minute(_at(since_ms)) + timedelta(minutes=1))
            wait = (need + self.DETECT_SETTLE - datetime.now(UTC)).total_seconds()
            if wait > 0:
                time.sleep(wait + 0.2)
        listed = {ex: self.trading_symbols(ex) for ex in EXCHANGES}
        ours = lambda g: g.symbol is None or g.symbol in listed[g.exchange]  # noqa: E731
        now = datetime.now(UTC)
        detected = gaps.detect_gaps(now=now, settle=self.DETECT_SETTLE, lookback=timedelta(hours=2), listed=listed)
        self.detected_until = floor_minute(now - self.DETECT_SETTLE)
        # open gaps, and failed ones (a backfill fails when it cannot keep its REST responses,
        # e.g. while S3 was down): retried as an operator or the next detection run would
        retry = [g for g in gaps.list_gaps(limit=1000) if g.status in ("open", "failed") and ours(g)]
        for gap in sorted(retry, key=lambda g: g.gap_start):
            gaps.fill_gap(gap, workers=4)
        all_gaps = [g for g in gaps.list_gaps(limit=1000) if ours(g)]
        figures.add(gaps_detected=len([g for g in detected if ours(g)]),
                    gaps_filled=sum(1 for g in all_gaps if g.status == "filled"),
                    gaps_failed=sum(1 for g in all_gaps if g.status == "failed"))
        failed = [g.to_dict() for g in all_gaps if g.status in ("failed", "open", "backfilling")]
        assert not failed, f"gaps not filled: {failed[:3]}"
        return all_gaps

    RECONCILE_SETTLE = timedelta(seconds=5)

    def reconcile(self, figures: Figures, until_ms: int, timeout: float = 300) -> datetime:
        """Run reconciliation in-process, as crypto_reconcile would, with a short settle, until
        both exchanges are reconciled past the minute `until_ms` falls in (a run takes what has
        settled; the next one the rest). Returns (and keeps for check_candles) how far both are.
        The engine waits out its REST settle (30 s) for a minute that closed just before."""
        from backfill.reconcile import run_reconcile

        need = ceil_minute(_at(until_ms))
        wait = (need + self.RECONCILE_SETTLE - datetime.now(UTC)).total_seconds()
        if wait > 0:
            time.sleep(wait + 0.2)
        listed = {ex: self.trading_symbols(ex) for ex in EXCHANGES}
        deadline = time.monotonic() + timeout
        totals = dict.fromkeys(("runs", "stream_compared", "stream_differing", "stream_missing", "requests"), 0)
        while True:
            results = run_reconcile(settle=self.RECONCILE_SETTLE, listed=listed, workers=4)
            failed = [r.to_dict() for r in results if not r.ok]
            assert not failed, f"reconciliation failed: {failed}"
            totals["runs"] += 1
            for r in results:
                for key in ("stream_compared", "stream_differing", "stream_missing", "requests"):
                    totals[key] += r.summary.get(key, 0)
            reached = self.reconciled()
            if reached >= need:
                break
            assert time.monotonic() < deadline, f"reconciled only up to {reached}, {need} wanted"
            time.sleep(1)
        figures.add(reconcile_runs=totals["runs"], reconcile_requests=totals["requests"],
                    stream_candles_compared=totals["stream_compared"],
                    stream_candles_differing=totals["stream_differing"],
                    stream_candles_missing=totals["stream_missing"])
        self.reconciled_until = reached
        return reached

    @staticmethod
    def reconciled() -> datetime:
        """How far both exchanges are reconciled (reconcile_state; the epoch when one never was)."""
        from backfill.reconcile import read_state

        return min((read_state(ex) or {}).get("reconciled_until") or _at(0) for ex in EXCHANGES)

    def check_candles(self, pg, since_ms: int, until_ms: int, figures: Figures, *, truth_everywhere=False) -> None:
        """After fill_gaps: no minute of [since, until) is missing for any trading symbol, and
        every minute inside a filled gap (every minute, with truth_everywhere) holds the
        simulator's true candle. After reconcile: EVERY minute of the window, for every trading
        symbol of both exchanges, holds the true candle (OHLC and volume) with source 'rest'."""
        from backfill import gaps as gaps_mod

        lo = floor_minute(_at(since_ms))
        detected_until, self.detected_until = self.detected_until, None
        reconciled_until, self.reconciled_until = self.reconciled_until, None
        if reconciled_until is not None:
            hi = ceil_minute(_at(until_ms))
            assert reconciled_until >= hi, f"reconciled up to {reconciled_until}, the window ends {hi}"
            truth_everywhere = True
        elif detected_until is not None:
            # after fill_gaps: every minute the scenario touched that detection could see
            hi = min(ceil_minute(_at(until_ms)), detected_until)
            assert hi > lo, f"nothing to check: detection saw up to {detected_until}, window starts {lo}"
        else:
            settled = datetime.now(UTC) - timedelta(seconds=10)
            hi = min(datetime.fromtimestamp(until_ms / 1000, UTC), settled).replace(second=0, microsecond=0)
            if hi <= lo:
                hi = lo + timedelta(minutes=1)
        filled = [g for g in gaps_mod.list_gaps(status="filled", limit=1000)
                  if g.gap_end > lo and g.gap_start < hi]
        missing = wrong = checked_rest = 0
        examples = []
        for exchange in EXCHANGES:
            symbols = sorted(self.trading_symbols(exchange))
            with pg.cursor() as cur:
                cur.execute("""SELECT symbol, open_time, open, high, low, close, volume, source, confirmed_empty
                                 FROM candles_1m WHERE exchange = %s AND open_time >= %s AND open_time < %s""",
                            (exchange, lo, hi))
                stored = {(r[0], r[1]): r[2:] for r in cur.fetchall()}
            for symbol in symbols:
                truth = {datetime.fromtimestamp(c["open_ms"] / 1000, UTC): c
                         for c in self.sim.candles(exchange, symbol, int(lo.timestamp() * 1000),
                                                   int(hi.timestamp() * 1000))}
                minute = lo
                while minute < hi:
                    row = stored.get((symbol, minute))
                    in_gap = any(g.exchange == exchange and g.symbol in (None, symbol)
                                 and g.gap_start <= minute < g.gap_end for g in filled)
                    if row is None:
                        missing += 1
                        examples.append(("missing", exchange, symbol, minute.isoformat()))
                    elif in_gap or truth_everywhere:
                        checked_rest += 1
                        if not _same_candle(row, truth.get(minute)):
                            wrong += 1
                            examples.append(("wrong", exchange, symbol, minute.isoformat(), row, truth.get(minute)))
                    minute += timedelta(minutes=1)
        figures.add(minutes_missing=missing, minutes_checked_vs_truth=checked_rest, minutes_wrong=wrong)
        assert missing == 0 and wrong == 0, f"candles: {missing} missing, {wrong} wrong, e.g. {examples[:4]}"

    def check_archive(self, s3, bucket: str, start_offsets: dict, end_offsets: dict, figures: Figures) -> None:
        """Every raw record with an offset in [start, end) is in S3 exactly once."""
        from common.topics import exchange_of_topic

        total, dups, missing = 0, 0, 0
        for (topic, part), end in end_offsets.items():
            start = start_offsets.get((topic, part), 0)
            if end <= start:
                continue
            exchange = exchange_of_topic(topic)
            keys = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"raw/exchange={exchange}/"):
                for o in page.get("Contents", []):
                    name = o["Key"].rsplit("/", 1)[-1]
                    t, p, first = name[: -len(".jsonl.gz")].rsplit("+", 2)
                    if t == topic and int(p) == part:
                        keys.append((int(first), o["Key"]))
            keys.sort()
            seen: dict[int, int] = {}
            for i, (first, key) in enumerate(keys):
                nxt = keys[i + 1][0] if i + 1 < len(keys) else None
                if first >= end or (nxt is not None and nxt <= start):
                    continue
                body = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                for line in body.splitlines():
                    off = json.loads(line)["offset"]
                    seen[off] = seen.get(off, 0) + 1
            window = range(start, end)
            total += len(window)
            missing += sum(1 for o in window if o not in seen)
            dups += sum(1 for o in window if seen.get(o, 0) > 1)
        figures.add(archived_records=total, archive_missing=missing, archive_duplicates=dups)
        assert missing == 0, f"{missing} raw records are not in S3"
        assert dups == 0, f"{dups} raw records are in S3 more than once"


@contextmanager
def scenario(h, pg, s3, bucket, name, *, archive=True, candles=True, stopped=()):
    """One fault scenario: from a live stream, the body injects the fault; afterwards everything
    produced in the window has gone through (lag back to 0), the ticks are accounted for against the
    simulator's log, every raw record is in S3 once, candles are the truth after detection,
    backfill and reconciliation, and no process is left dead (but those `stopped` on purpose)."""
    from common.topics import RAW_TOPICS

    h.wait_streaming(pg)
    raw_start = h.end_offsets(RAW_TOPICS)
    t0 = now_ms()
    fig = Figures(name)
    yield fig
    t1 = now_ms()
    raw_end = h.end_offsets(RAW_TOPICS)
    h.settle(archive=archive, timeout=300)
    h.check_ticks(pg, t0, t1, fig)
    if archive:
        h.check_archive(s3, bucket, raw_start, raw_end, fig)
    if candles:
        h.fill_gaps(fig, t0, t1)
        h.reconcile(fig, t1)
        h.check_candles(pg, t0, t1, fig)
    fig.print()
    assert h.all_running(except_=stopped) == {}, "a process was left dead"


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _same_candle(row, true) -> bool:
    open_, high, low, close, volume, source, empty = row
    if true is None or int(true.get("trades", 1)) == 0:
        # no trade in the minute: KuCoin serves no row (confirmed empty); Binance a zero-volume row
        return bool(empty) or (volume is not None and Decimal(volume) == 0)
    if source != "rest":
        return False
    return all(Decimal(str(a)) == Decimal(str(true[k])) for a, k in
               ((open_, "open"), (high, "high"), (low, "low"), (close, "close"), (volume, "volume")))


@pytest.fixture(scope="session")
def live_pipeline(stack):
    from cryptopipe.stack import manager, supervisor
    from cryptopipe.stack.sim import sim_endpoints
    from sim.control import SimControl

    from common.db import connect
    from common.settings import get_settings
    from tests.plugins.stack import truncate_pipeline_tables

    # a clean slate: sessions, ticks and gaps of earlier tests would otherwise count as this
    # pipeline's coverage and history (the whole-pipeline suites run last, see tests/conftest.py)
    ctx = manager.make_context("sim")
    for program in (*supervisor.PIPELINE_PROGRAMS,):
        if supervisor.running(ctx):
            supervisor.stop_program(ctx, program)
    conn = connect()
    conn.autocommit = True
    truncate_pipeline_tables(conn)
    conn.close()
    remembered = {key: ctx.env.get(key) for key in E2E_ENV}
    manager.up("sim", with_airflow=False, sim_args=E2E_SIM_ARGS, env=E2E_ENV)
    get_settings.cache_clear()
    handle = PipelineHandle(manager.make_context(), SimControl(sim_endpoints()["SIM_CONTROL_URL"]))
    wait_for(lambda: not handle.all_running() or None, 60, "every program RUNNING")
    yield handle
    ctx = manager.make_context()
    for program in (*supervisor.PIPELINE_PROGRAMS, "sim"):
        try:
            supervisor.stop_program(ctx, program)
        except Exception:
            pass
    for key, value in remembered.items():      # the stack's own settings again for its next `up`
        if value is None:
            ctx.env.pop(key, None)
        else:
            ctx.env[key] = value
    manager.write_stack_env(ctx)
