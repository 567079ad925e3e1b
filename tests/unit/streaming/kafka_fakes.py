"""In-memory stand-ins for confluent-kafka objects, for the sinks' unit tests."""
from __future__ import annotations

from confluent_kafka import TopicPartition


class FakeMessage:
    def __init__(self, topic, partition, offset, value, key=None, headers=None, timestamp_ms=0, error=None):
        self._topic, self._partition, self._offset = topic, partition, offset
        self._value, self._key, self._headers = value, key, headers
        self._ts, self._error = timestamp_ms, error

    def topic(self): return self._topic
    def partition(self): return self._partition
    def offset(self): return self._offset
    def value(self): return self._value
    def key(self): return self._key
    def headers(self): return self._headers
    def timestamp(self): return (1, self._ts)
    def error(self): return self._error


class FakeProducer:
    def __init__(self):
        self.records = []            # (topic, value, key, headers)
        self.partitions = []         # the partition asked for, per record (None: the partitioner's)

    def produce(self, topic, value=None, key=None, headers=None, partition=None):
        self.records.append((topic, value, key, list(headers or [])))
        self.partitions.append(partition)

    def poll(self, _timeout=0):
        return 0

    def list_topics(self, topic=None, timeout=None):
        """Metadata as confluent-kafka shapes it: every topic has 3 partitions."""
        from types import SimpleNamespace

        meta = SimpleNamespace(error=None, partitions={p: None for p in range(3)})
        return SimpleNamespace(topics={topic: meta})

    def flush(self, _timeout=None):
        return 0

    def by_topic(self, topic):
        return [r for r in self.records if r[0] == topic]


class FakeConsumer:
    """Serves prepared messages in batches; records commits, pauses and resumes."""

    def __init__(self, messages=(), assignment=()):
        self.queue = list(messages)
        self.commits = []            # list of [(topic, partition, offset)]
        self.paused = []
        self.resumed = []
        self._assignment = [TopicPartition(t, p) for t, p in assignment]

    def consume(self, num_messages=1, timeout=0):
        out, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return out

    def commit(self, offsets=None, asynchronous=True):
        self.commits.append([(o.topic, o.partition, o.offset) for o in offsets])

    def pause(self, parts):
        self.paused.append(list(parts))

    def resume(self, parts):
        self.resumed.append(list(parts))

    def assignment(self):
        return list(self._assignment)

    def position(self, parts):
        return parts

    def get_watermark_offsets(self, tp, cached=False):
        return (0, 0)
