"""The one place Kafka clients are built (confluent-kafka)."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from common.settings import Settings, get_settings
from common.topics import topic_specs

log = logging.getLogger(__name__)


class KafkaCredentialsMissing(ValueError):
    """A SASL protocol is configured but no username/password: say so before librdkafka retries forever."""


def connection_config(settings: Settings | None = None) -> dict[str, str]:
    """Where the broker is and who this client is, in librdkafka's names: what every client of the
    stack (ours, Airflow's provider hook, a test's) needs to connect."""
    s = settings or get_settings()
    conf = {"bootstrap.servers": s.kafka_bootstrap_servers, "security.protocol": s.kafka_security_protocol}
    if s.kafka_security_protocol.upper().startswith("SASL"):
        password = s.kafka_sasl_password.get_secret_value()
        if not s.kafka_sasl_username or not password:
            raise KafkaCredentialsMissing(
                f"Kafka security protocol {s.kafka_security_protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD (`make up` writes the stack's admin identity to .stack/stack.env)")
        conf.update({"sasl.mechanism": s.kafka_sasl_mechanism, "sasl.username": s.kafka_sasl_username,
                     "sasl.password": password})
    return conf


def _base(overrides: dict | None, settings: Settings | None = None) -> dict:
    """`settings`: another identity or broker than the process's own (the stack manager, tests)."""
    conf = connection_config(settings)
    conf.update(overrides or {})
    return conf


def make_producer(overrides: dict | None = None, settings: Settings | None = None) -> Producer:
    """Idempotent, acks=all, compressed producer with small linger for micro-batching."""
    conf = {
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 262_144,
        "message.timeout.ms": 0,          # never expire a queued message: retry until delivered
    }
    conf.update(overrides or {})
    return Producer(_base(conf, settings))


def make_transactional_producer(transactional_id: str, overrides: dict | None = None) -> Producer:
    conf = {"transactional.id": transactional_id, "message.timeout.ms": 60_000,
            "transaction.timeout.ms": 60_000}
    conf.update(overrides or {})
    return make_producer(conf)


def make_consumer(group_id: str, overrides: dict | None = None, settings: Settings | None = None) -> Consumer:
    """Consumer-group member with manual commits (offsets committed only after durable writes)."""
    conf = {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "max.poll.interval.ms": 300_000,
    }
    conf.update(overrides or {})
    return Consumer(_base(conf, settings))


def make_admin(overrides: dict | None = None, settings: Settings | None = None) -> AdminClient:
    return AdminClient(_base(overrides, settings))


def ensure_topics(admin: AdminClient | None = None, timeout: float = 30.0, *, replication: int = 1,
                  min_insync: int = 1, min_partitions: int = 1) -> list[str]:
    """Create the DESIGN.md topics that are missing, with `replication` replicas and
    min.insync.replicas=`min_insync` (a cluster: 3 and 2), the partitioned ones with at least
    `min_partitions` (one per consumer-group member); returns the names created."""
    settings = get_settings()
    admin = admin or make_admin()
    existing = set(admin.list_topics(timeout=timeout).topics)
    specs = topic_specs(max(settings.topic_partitions, min_partitions), settings.raw_retention_ms, min_insync)
    wanted = {name: spec for name, spec in specs.items() if name not in existing}
    if wanted:
        # a concurrent creator may win the race: TOPIC_ALREADY_EXISTS is fine here
        create_topics({name: spec["partitions"] for name, spec in wanted.items()}, admin, timeout,
                      configs={name: spec["config"] for name, spec in wanted.items()}, exist_ok=True,
                      replication=replication)
    return list(wanted)


def create_topics(partitions: dict[str, int], admin: AdminClient | None = None, timeout: float = 30.0, *,
                  configs: dict[str, dict] | None = None, exist_ok: bool = False, replication: int = 1) -> None:
    """Create topics {name: partitions} (`replication` replicas, `configs[name]` as topic config)
    and wait for each; raises on a failure (a topic that already exists only without `exist_ok`)."""
    admin = admin or make_admin()     # held until every future settled: a collected client never settles them
    configs = configs or {}
    futures = admin.create_topics([NewTopic(n, num_partitions=p, replication_factor=replication,
                                            config=configs.get(n, {}))
                                   for n, p in partitions.items()], operation_timeout=timeout)
    for f in futures.values():
        try:
            f.result(timeout=2 * timeout)
        except Exception as exc:
            if not (exist_ok and "TOPIC_ALREADY_EXISTS" in str(exc)):
                raise


def delete_topics(names: Iterable[str], admin: AdminClient | None = None, timeout: float = 30.0,
                  wait_gone: float = 0.0) -> None:
    """Best-effort deletion (clean-up paths): errors are swallowed. With `wait_gone`, waits up to
    that many seconds until the broker's metadata no longer lists them."""
    names = list(names)
    try:
        admin = admin or make_admin()
        for f in admin.delete_topics(names, operation_timeout=timeout).values():
            try:
                f.result(timeout=2 * timeout)
            except Exception as exc:  # noqa: BLE001 - clean-up only
                log.warning("deleting a topic failed (clean-up continues): %r", exc)
        deadline = time.monotonic() + wait_gone
        while time.monotonic() < deadline:
            if not set(names) & set(admin.list_topics(timeout=10).topics):
                return
            time.sleep(0.3)
    except Exception as exc:  # noqa: BLE001 - clean-up only
        log.warning("deleting topics %s failed (clean-up continues): %r", names, exc)
