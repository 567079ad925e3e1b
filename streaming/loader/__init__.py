"""Loader: normalized ticks, pipeline events and dead letters -> Postgres (`cryptopipe load`).

One job per module: `records` sorts a batch (pure), `sql` holds the SQL, `writer` writes one
batch in one transaction with the offsets it covers, `loop` is the Kafka loop.
"""
from .loop import COMPONENT, DEFAULT_GROUP, Loader, main
from .records import Batch, Session, merge_events, sort_batch
from .writer import BatchResult, Offsets, Replayed, TickWriter

__all__ = ["COMPONENT", "DEFAULT_GROUP", "Batch", "BatchResult", "Loader", "Offsets", "Replayed", "Session",
           "TickWriter", "main", "merge_events", "sort_batch"]
