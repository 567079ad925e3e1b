"""The Kafka producer with the on-disk spool behind it: nothing received is ever dropped.

Modes:
- direct: records go to the producer (idempotent, acks=all, lz4, linger 5 ms = the Batcher).
  Every produced record is tracked until the broker acknowledges it.
- spooling: entered when the broker stops acknowledging (oldest unacknowledged record older than
  `stuck_after_s`, or more than `max_pending` unacknowledged, or the producer's queue is full).
  New records are appended to the spool. Once every record produced before is acknowledged (the
  broker is back), the spool is replayed in order, chunk by chunk; its cursor moves only after a
  chunk is acknowledged. Empty spool -> direct again (+ `spool_drained` event).
- spool full: `offer` returns False and the caller stops reading until there is room (a
  `spool_full` event records the outage). Events keep a reserve so they still fit.
- close: flush for a few seconds; what the broker did not acknowledge is written to the front of
  the spool (it is older than anything spooled) and replayed by the next process.

Known limit: a record handed to the producer lives only in its memory until acknowledged. A
SIGTERM saves it (above); a kill -9 loses it: normally the last few milliseconds of frames, during
a broker outage up to `stuck_after_s` (2 s) before spooling begins. Closing that window needs a
write-ahead spool (every record on disk before produce, cursor on acknowledged prefix): not done.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException

from .spool import Record, Spool, encode

log = logging.getLogger("cryptopipe.extractor")

SAFE_ALL = 2 ** 63 - 1      # safe_through_ns when nothing is in flight


class KafkaSink:
    def __init__(self, producer, spool: Spool, metrics=None, *, max_pending: int = 50_000,
                 stuck_after_s: float = 2.0, replay_batch: int = 2000,
                 on_spool_full: Callable[[], None] | None = None,
                 on_spool_drained: Callable[[int], None] | None = None):
        self.producer = producer
        self.spool = spool
        self.metrics = metrics
        self.max_pending = max_pending
        self.stuck_after_s = stuck_after_s
        self.replay_batch = replay_batch
        self.on_spool_full = on_spool_full
        self.on_spool_drained = on_spool_drained
        self._ids = itertools.count(1)
        # id -> (record, from_spool, produced at monotonic); dicts keep insertion order
        self._pending: dict[int, tuple[Record, bool, float]] = {}
        self._replay_pos: tuple[int, int] | None = None
        self._replay_failed = False
        self.spooling = not spool.empty()          # a previous process left records: replay first
        self._full = False
        self._spooled_since = 0
        self.delivered = 0
        self.errors = 0
        if self.spooling:
            log.info("spool holds %d bytes from a previous run: replaying before new records", spool.depth_bytes)

    # ------------------------------------------------------------------ accepting records

    def offer(self, record: Record, *, event: bool = False) -> bool:
        """Hand over one record; True when it is produced or spooled, False when the spool is full."""
        self._serve()
        if not self.spooling:
            if not self._stuck() and self._produce(record, False):
                return True
            self._enter_spooling()
        if self.spool.append(record, reserve=event):
            self._spooled_since += 1
            self._update_gauges()
            return True
        if not self._full:
            self._full = True
            log.error("spool full (%d bytes): not reading until Kafka takes records again", self.spool.depth_bytes)
            if self.on_spool_full is not None:
                self.on_spool_full()
        return False

    async def put(self, record: Record, stop: asyncio.Event | None = None) -> bool:
        """Offer, waiting (not reading) while the spool is full; False only if stopped meanwhile."""
        while not self.offer(record):
            if stop is not None and stop.is_set():
                return False
            await asyncio.sleep(0.05)
        return True

    @property
    def full(self) -> bool:
        return self._full

    # ------------------------------------------------------------------ producer plumbing

    def _produce(self, record: Record, from_spool: bool) -> bool:
        rid = next(self._ids)
        try:
            self.producer.produce(record.topic, value=record.value, key=record.key, headers=record.headers,
                                  on_delivery=lambda err, msg, rid=rid: self._delivered(rid, err))
        except BufferError:
            return False                      # librdkafka's queue is full: the broker is away
        except KafkaException as exc:
            if exc.args and getattr(exc.args[0], "code", lambda: None)() == KafkaError.MSG_SIZE_TOO_LARGE:
                # Kafka will never take it: keep it on disk beside the spool rather than block the spool
                self._reject_to_disk(record, "msg_size_too_large")
                return True
            self.errors += 1
            if self.metrics is not None:
                self.metrics.produce_errors.inc()
            log.error("produce failed (%s): spooling", str(exc)[:200])
            return False
        except Exception as exc:  # noqa: BLE001 - keep the record, count the error
            self.errors += 1
            if self.metrics is not None:
                self.metrics.produce_errors.inc()
            log.error("produce failed (%s): spooling", str(exc)[:200])
            return False
        self._pending[rid] = (record, from_spool, time.monotonic())
        return True

    def _reject_to_disk(self, record: Record, reason: str) -> None:
        self.errors += 1
        if self.metrics is not None:
            self.metrics.produce_errors.inc()
        path = self.spool.dir / "rejected.bin"
        with open(path, "ab") as fh:
            fh.write(encode(record))
        log.error("record of %d bytes refused by Kafka (%s): kept in %s", len(record.value), reason, path)

    def _delivered(self, rid: int, err) -> None:
        entry = self._pending.pop(rid, None)
        if entry is None:
            return
        record, from_spool, produced = entry
        if err is not None:
            # idempotent producer with infinite message timeout: only fatal errors get here
            self.errors += 1
            if self.metrics is not None:
                self.metrics.produce_errors.inc()
            log.error("delivery failed (%s): record goes back to the spool", str(err)[:200])
            if from_spool:
                self._replay_failed = True           # still in the spool: the cursor must not move
            else:
                self._enter_spooling()
                self.spool.append(record, reserve=True)
            return
        self.delivered += 1
        if self.metrics is not None:
            self.metrics.delivery.observe(time.monotonic() - produced)

    def _stuck(self) -> bool:
        if not self._pending:
            return False
        if len(self._pending) >= self.max_pending:
            return True
        oldest = next(iter(self._pending.values()))[2]
        return time.monotonic() - oldest > self.stuck_after_s

    def _enter_spooling(self) -> None:
        if not self.spooling:
            self.spooling = True
            self._spooled_since = 0
            log.warning("Kafka is not acknowledging (%d records pending): spooling to %s",
                        len(self._pending), self.spool.dir)

    # ------------------------------------------------------------------ draining

    def poll(self) -> None:
        """Serve delivery reports and the spool, and refresh the gauges (the runner: every 50 ms)."""
        self._serve()
        self._update_gauges()

    def _serve(self) -> None:
        # per record (from offer): no gauges here, two Gauge.set per frame were ~5 % of the extractor
        self.producer.poll(0)
        if self.spooling:
            self._drain_step()

    def _drain_step(self) -> None:
        if self._pending:
            return                              # older records first: wait for their acks
        if self._replay_pos is not None and self._replay_failed:
            self._replay_pos = None                  # replay the chunk again from the cursor
            self._replay_failed = False
            return
        if self._replay_pos is not None:
            self.spool.commit(self._replay_pos)
            self._replay_pos = None
            if self._full and self.spool.has_room(self.spool.max_bytes // 10):
                self._full = False
        records, pos = self.spool.peek(max_records=self.replay_batch)
        if not records:
            self.spool.commit(pos)
            self.spooling = False
            was_full, self._full = self._full, False
            log.info("spool drained (%d records spooled since the outage began)%s", self._spooled_since,
                     " after being full" if was_full else "")
            if self.on_spool_drained is not None:
                self.on_spool_drained(self._spooled_since)
            return
        positions = list(self.spool.last_positions)
        for n, record in enumerate(records):
            if not self._produce(record, True):
                # the producer's queue filled up mid-chunk: the cursor will stop after the last
                # record it took; the rest is replayed on a later step
                if n:
                    self._replay_pos = positions[n - 1]
                return
        self._replay_pos = pos

    def _update_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.spool_bytes.set(self.spool.depth_bytes)
            self.metrics.pending.set(len(self._pending))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def safe_through_ns(self) -> int:
        """Receive time up to which every frame handed over is safe from a kill -9: acknowledged by
        Kafka or on disk in the spool. Frames produced but not yet acknowledged live only in
        librdkafka's memory; the oldest of them bounds it (records are produced in receive order)."""
        for record, from_spool, _ in self._pending.values():
            if not from_spool and record.received_ns:
                return record.received_ns - 1
        return SAFE_ALL

    # ------------------------------------------------------------------ shutdown

    def close(self, timeout: float = 5.0) -> int:
        """Flush; what is still unacknowledged goes to the front of the spool. Returns that count."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.producer.poll(0.05)
            if self.spooling:
                self._drain_step()
            if not self._pending and not self.spooling:
                break
            if self._pending and self._stuck() and not self.spooling:
                break
        self.producer.flush(max(0.0, min(1.0, deadline - time.monotonic())))
        self.producer.poll(0)
        left = [rec for rec, from_spool, _ in self._pending.values() if not from_spool]
        if left:
            self.spool.prepend(left)
            log.warning("%d unacknowledged records saved to the front of the spool", len(left))
        self._pending.clear()
        self.spool.close()
        return len(left)
