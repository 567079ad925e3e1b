"""How many of each the stack runs: Kafka brokers (KAFKA_BROKERS) and consumer processes per
consumer daemon (TRANSFORM_WORKERS, LOAD_WORKERS, ARCHIVE_WORKERS), all 1 by default.

Each value comes from the stack's env (stack.env, which `stack up` writes), else from the process
environment, else 1. With N > 1 workers supervisord runs the program with `numprocs=N` and names
its processes `<program>_00`, `<program>_01`, ... (group `pipeline`); with one, the process keeps
the program's own name, so a one-of-each stack is named as it always was.
"""
from __future__ import annotations

import os

from common.supervisor_rpc import numbered_program
from cryptopipe.stack.component import StackContext
from cryptopipe.stack.progress import StepFailed

BROKERS_KEY = "KAFKA_BROKERS"
HOSTS_KEY = "KAFKA_HOSTS"            # "loopback" (default) or "netns": each broker in its own network namespace
WORKER_KEYS = {"transform": "TRANSFORM_WORKERS", "load": "LOAD_WORKERS", "archive": "ARCHIVE_WORKERS"}
SCALE_KEYS = (BROKERS_KEY, HOSTS_KEY, *WORKER_KEYS.values())
MAX_BROKERS = 5
MAX_WORKERS = 8
HOSTS_MODES = ("loopback", "netns")


def _raw(ctx: StackContext | None, key: str) -> str:
    value = (ctx.env.get(key) if ctx is not None else None) or os.environ.get(key) or ""
    return value.strip()


def _count(ctx: StackContext | None, key: str, most: int) -> int:
    raw = _raw(ctx, key) or "1"
    try:
        n = int(raw)
    except ValueError:
        raise StepFailed(f"{key} must be a whole number from 1 to {most}, got {raw[:20]!r}") from None
    if not 1 <= n <= most:
        raise StepFailed(f"{key} must be from 1 to {most}, got {n}")
    return n


def kafka_brokers(ctx: StackContext | None) -> int:
    n = _count(ctx, BROKERS_KEY, MAX_BROKERS)
    if n == 2:
        raise StepFailed(f"{BROKERS_KEY}=2 cannot keep a KRaft quorum when one node is lost: use 1, 3 or 5")
    if n == 4:
        raise StepFailed(f"{BROKERS_KEY}=4 tolerates no more failures than 3 does: use 1, 3 or 5")
    return n


def kafka_hosts(ctx: StackContext | None) -> str:
    mode = _raw(ctx, HOSTS_KEY) or "loopback"
    if mode not in HOSTS_MODES:
        raise StepFailed(f"{HOSTS_KEY} must be one of {', '.join(HOSTS_MODES)}, got {mode[:20]!r}")
    return mode


def replication(ctx: StackContext | None) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of the pipeline's topics: 3 and 2 on a cluster of
    three or more (a write survives one broker lost, and is refused rather than kept on one copy
    when two are), 1 and 1 on a single broker."""
    rf = min(3, kafka_brokers(ctx))
    return rf, (2 if rf >= 3 else 1)


def workers(ctx: StackContext | None, program: str) -> int:
    key = WORKER_KEYS.get(program)
    return _count(ctx, key, MAX_WORKERS) if key else 1


def process_names(ctx: StackContext | None, program: str) -> list[str]:
    """supervisord's names for the processes of `program` (without the group)."""
    n = workers(ctx, program)
    return [program] if n == 1 else [f"{program}_{i:02d}" for i in range(n)]


def program_of_process(name: str) -> str:
    """`load_01` -> `load`; any other name is its own program."""
    base = numbered_program(name)
    return base if base in WORKER_KEYS else name


def settings_from(values: dict[str, str | None]) -> dict[str, str]:
    """The scale settings among `values` (e.g. os.environ), validated: what `stack up` records."""
    out = {k: str(values[k]).strip() for k in SCALE_KEYS if values.get(k) not in (None, "")}
    probe = StackContext(paths=None, env=out)  # type: ignore[arg-type]
    kafka_brokers(probe), kafka_hosts(probe)
    for program in WORKER_KEYS:
        workers(probe, program)
    return out
