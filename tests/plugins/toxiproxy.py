"""Toxiproxy fixtures for network-fault tests (cryptopipe/stack/toxiproxy.py does the work).

- `toxiproxy` (session): a private toxiproxy server on a free 127.0.0.1 port (built with
  `go install` into the cache the first time, ~2 min), stopped at the end of the session.
- `toxi_proxies` (module): proxies in front of the stack's Kafka, Postgres and S3, and the
  environment that points a process through them:
      p.env            {"KAFKA_BOOTSTRAP_SERVERS", "POSTGRES_DSN", "S3_ENDPOINT_URL"}
      p.kafka / p.postgres / p.s3   proxy names for toxiproxy.add_toxic / disable / enable
      p.reset()        every toxic removed, every proxy enabled
  Kafka's proxy must listen on the port the broker advertises on its TOXI listener (19192), so
  only one module per machine holds it at a time: the fixture takes a file lock (other runs wait)
  and restarts the stack's broker once if it was started before that listener existed.
"""
from __future__ import annotations

import fcntl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import pytest

KAFKA_LOCK_WAIT_S = 900


def dsn_via(dsn: str, port: int) -> str:
    """The same DSN (URL form) with its host:port replaced by 127.0.0.1:<port>."""
    parts = urlsplit(dsn)
    creds, _, _hostport = parts.netloc.rpartition("@")
    netloc = f"{creds}@127.0.0.1:{port}" if creds else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class ToxiProxies:
    toxi: object
    kafka: str = "kafka"
    postgres: str = "postgres"
    s3: str = "s3"
    env: dict = field(default_factory=dict)

    def reset(self) -> None:
        self.toxi.reset()


@pytest.fixture(scope="session")
def toxiproxy(stack, tmp_path_factory):
    from cryptopipe.stack.toxiproxy import Toxiproxy

    server = Toxiproxy.start(log_path=tmp_path_factory.mktemp("toxiproxy") / "toxiproxy.log")
    yield server
    server.stop()


def _lock_kafka_proxy_port(path):
    f = open(path, "w")
    deadline = time.monotonic() + KAFKA_LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise RuntimeError(f"another test run has held {path} (the Kafka toxiproxy port) "
                                   f"for more than {KAFKA_LOCK_WAIT_S}s")
            time.sleep(1)


def ensure_kafka_toxi_listener(log=None) -> None:
    """The stack running, its broker listening on the TOXI listener; restarts a broker that was
    started before cryptopipe/stack/kafka.py had that listener (once per machine)."""
    from cryptopipe.stack.kafka import KAFKA_TOXI_PORT
    from cryptopipe.stack.manager import make_context, stack_lock
    from cryptopipe.stack.toxiproxy import ToxiproxyError, file_lock, kafka_toxi_listener_up
    from tests.plugins.stack import core_up, start_program, stop_program

    core_up()        # rewrites server.properties (Kafka.prepare) with the TOXI listener
    if kafka_toxi_listener_up():
        return
    ctx = make_context()
    with file_lock(ctx.paths.run / "kafka-toxi-restart.lock"):
        if kafka_toxi_listener_up():      # another process restarted it meanwhile
            return
        props = (ctx.paths.kafka_dir / "server.properties").read_text()
        if f"TOXI://127.0.0.1:{KAFKA_TOXI_PORT}" not in props:
            raise ToxiproxyError(f"{ctx.paths.kafka_dir / 'server.properties'} has no TOXI listener "
                                 "after `stack up --core`: cryptopipe/stack/kafka.py is out of date")
        if log:
            log("restarting Kafka to add its TOXI listener (once)")
        with stack_lock(ctx):
            stop_program("kafka")
            start_program("kafka")
    deadline = time.monotonic() + 60
    while not kafka_toxi_listener_up():
        if time.monotonic() > deadline:
            raise ToxiproxyError(f"Kafka restarted but does not answer on 127.0.0.1:{KAFKA_TOXI_PORT}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def toxi_proxies(stack, toxiproxy):
    from cryptopipe.stack.kafka import KAFKA_TOXI_PORT, KAFKA_TOXI_PROXY_PORT
    from cryptopipe.stack.manager import make_context, port_owner
    from cryptopipe.stack.paths import POSTGRES_PORT, S3_PORT
    from cryptopipe.stack.toxiproxy import port_open

    lock = _lock_kafka_proxy_port(make_context().paths.run / "toxiproxy-kafka-proxy.lock")
    try:
        ensure_kafka_toxi_listener()
        if port_open(KAFKA_TOXI_PROXY_PORT):
            raise RuntimeError(f"port {KAFKA_TOXI_PROXY_PORT} (Kafka's toxiproxy) is taken by "
                               f"{port_owner(KAFKA_TOXI_PROXY_PORT)}")
        toxiproxy.create_proxy("kafka", f"127.0.0.1:{KAFKA_TOXI_PORT}", listen_port=KAFKA_TOXI_PROXY_PORT)
        pg_port = toxiproxy.create_proxy("postgres", f"127.0.0.1:{POSTGRES_PORT}")
        s3_port = toxiproxy.create_proxy("s3", f"127.0.0.1:{S3_PORT}")
        proxies = ToxiProxies(toxiproxy, env={
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{KAFKA_TOXI_PROXY_PORT}",
            "POSTGRES_DSN": dsn_via(stack.postgres_dsn, pg_port),
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        })
        yield proxies
        for name in ("kafka", "postgres", "s3"):
            try:
                toxiproxy.delete_proxy(name)
            except Exception:
                pass
    finally:
        lock.close()
