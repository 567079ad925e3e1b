"""Where the local stack keeps things: state under $CRYPTOPIPE_HOME (git-ignored `.stack/`),
downloads under the cache (outside the repository)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common.settings import REPO_ROOT, cache_home, port_offset, stack_home

RESOURCES = Path(__file__).resolve().parent / "resources"


# Ports of the local stack (all on 127.0.0.1), moved together by CRYPTOPIPE_PORT_OFFSET.
PORT_OFFSET = port_offset()
KAFKA_PORT = 9092 + PORT_OFFSET
KAFKA_CONTROLLER_PORT = 9093 + PORT_OFFSET
KAFKA_INTERNAL_PORT = 9094 + PORT_OFFSET       # the broker's own listener (cryptopipe/stack/kafka.py)
KAFKA_TOXI_PORT = 19092 + PORT_OFFSET          # Kafka's listener for network-fault tests
KAFKA_TOXI_PROXY_PORT = 19192 + PORT_OFFSET    # ... and the Toxiproxy port it advertises


def kafka_node_ports(node: int) -> tuple[int, int, int]:
    """(client, controller, internal) ports of node 1, 2, ... of a KAFKA_BROKERS>1 cluster:
    9192-9194, 9292-9294, 9392-9394 (+ offset), clear of the single broker's and the daemons'."""
    return tuple(base + 100 * node + PORT_OFFSET for base in (9092, 9093, 9094))  # type: ignore[return-value]


POSTGRES_PORT = 5432 + PORT_OFFSET
S3_PORT = 9000 + PORT_OFFSET
AIRFLOW_PORT = 8080 + PORT_OFFSET
SIM_PORT = 8765 + PORT_OFFSET
# the prices server (supervisord program `api`). NB 8000 + N*1000 is S3's 9000 + (N-1)*1000: two
# stacks whose offsets differ by exactly 1000 collide there; CRYPTOPIPE_API_PORT picks another port
API_PORT_BASE = 8000
API_PORT = int(os.environ.get("CRYPTOPIPE_API_PORT") or API_PORT_BASE + PORT_OFFSET)


@dataclass(frozen=True)
class Paths:
    home: Path
    cache: Path

    @property
    def env_file(self) -> Path: return self.home / "stack.env"
    @property
    def logs(self) -> Path: return self.home / "logs"
    @property
    def run(self) -> Path: return self.home / "run"
    @property
    def supervisor_conf(self) -> Path: return self.home / "supervisord.conf"
    @property
    def supervisor_socket(self) -> Path: return self.run / "supervisor.sock"
    @property
    def supervisor_pid(self) -> Path: return self.run / "supervisord.pid"
    @property
    def kafka_dir(self) -> Path: return self.home / "kafka"
    @property
    def kafka_libs(self) -> Path: return self.cache / "kafka-libs"
    @property
    def m2(self) -> Path: return self.cache / "m2"
    @property
    def s3proxy_jar(self) -> Path: return self.cache / "s3proxy" / "s3proxy-4.1.0-jar-with-dependencies.jar"
    @property
    def s3_dir(self) -> Path: return self.home / "s3"
    @property
    def pg_link(self) -> Path: return self.home / "postgres"
    @property
    def airflow_home(self) -> Path: return self.home / "airflow"
    @property
    def spool(self) -> Path: return self.home / "spool"
    @property
    def source_file(self) -> Path: return self.home / "source"


def get_paths() -> Paths:
    return Paths(home=stack_home(), cache=cache_home())


def python_bin() -> str:
    """The interpreter the stack's programs run with: the bootstrap venv's stable link when it
    exists (so the supervisord config does not depend on which venv called `up`)."""
    import os

    explicit = os.environ.get("CRYPTOPIPE_PYTHON")
    if explicit:
        return explicit
    current = cache_home() / "venv-current" / "bin" / "python"
    return str(current) if current.exists() else sys.executable


def repo_root() -> Path:
    return REPO_ROOT
