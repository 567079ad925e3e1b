"""Who may do what on the stack's Kafka: one SCRAM-SHA-512 identity per program, its ACLs, and
how the stack manager makes the broker agree with them.

- Identities are the supervisord program names (DESIGN.md) plus `airflow` (the supervisor DAG)
  and `admin`, a super user for the stack manager, tools (`cryptopipe peek`, bench) and tests.
  Passwords are generated at the first `make up` into `.stack/stack.env` (cryptopipe/stack/secrets.py).
- The broker itself is `broker`, a PLAIN identity declared in its own config
  (cryptopipe/stack/kafka.py). It exists before any SCRAM credential does, so the manager creates
  the SCRAM users and ACLs through the broker's internal listener as `broker`: on a fresh stack,
  on every `up` (idempotent: only what is missing or changed is written), and on a stack whose
  storage was formatted before Kafka asked who is writing. (`StorageTool format --add-scram` would
  put the passwords on a command line, readable by every local user in /proc, and could not
  upgrade an existing stack anyway.)
- Resource patterns are PREFIXED on the canonical names: `binance_raw_data` also covers a test's
  or the bench's private `binance_raw_data_t1a2b...` (`--topic-suffix`), and group `transformer`
  covers `transformer-test-...`. That opens nothing beyond the owner's own family of names:
  only `admin` may create topics. Idempotent producers need no IDEMPOTENT_WRITE on the cluster:
  WRITE on a topic is enough since Kafka 3.0 (KIP-679).
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from common.topics import DLQ_TOPICS, EXCHANGES, PIPELINE_EVENTS, RAW_TOPICS, TRANSFORMED_TOPICS, raw_topic

ADMIN = "admin"
BROKER = "broker"
MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
SECURITY_PROTOCOL = "SASL_PLAINTEXT"

# the streaming daemons' default consumer groups and the transformer's transactional.id prefix
# (streaming/*.py DEFAULT_GROUP, streaming/transformer.py default_transactional_id; a unit test
# holds them together)
TRANSFORM_GROUP, LOAD_GROUP, ARCHIVE_GROUP = "transformer", "loader", "archiver"
TRANSFORM_TXN_PREFIX = f"cryptopipe-{TRANSFORM_GROUP}"
API_GROUP_PREFIX = "api-"


@dataclass(frozen=True)
class Grant:
    resource: str        # topic | group | transactional_id
    prefix: str          # a PREFIXED resource pattern
    operation: str       # READ | WRITE | DESCRIBE (READ and WRITE imply DESCRIBE)


def _topics(names, operation: str) -> tuple[Grant, ...]:
    return tuple(Grant("topic", name, operation) for name in names)


# what reading the daemons' progress takes: end offsets of the topics they consume, their groups' offsets
_PROGRESS = (*_topics(RAW_TOPICS + TRANSFORMED_TOPICS + (PIPELINE_EVENTS,), "DESCRIBE"),
             *(Grant("group", g, "DESCRIBE") for g in (TRANSFORM_GROUP, LOAD_GROUP, ARCHIVE_GROUP)))

GRANTS: dict[str, tuple[Grant, ...]] = {
    **{f"extract-{ex}": _topics((raw_topic(ex), PIPELINE_EVENTS), "WRITE") for ex in EXCHANGES},
    "transform": (*_topics(RAW_TOPICS, "READ"), *_topics(TRANSFORMED_TOPICS + DLQ_TOPICS, "WRITE"),
                  Grant("group", TRANSFORM_GROUP, "READ"),
                  Grant("transactional_id", TRANSFORM_TXN_PREFIX, "WRITE")),
    "load": (*_topics(TRANSFORMED_TOPICS + (PIPELINE_EVENTS,) + DLQ_TOPICS, "READ"), *_topics(DLQ_TOPICS, "WRITE"),
             Grant("group", LOAD_GROUP, "READ")),
    "archive": (*_topics(RAW_TOPICS, "READ"), Grant("group", ARCHIVE_GROUP, "READ")),
    # the prices server: its tail reads the ticks (groups api-... or manual assignment); /v1/health
    # shows the daemons' lag (end offsets and committed offsets, common/consumer_lag.py)
    "api": (*_topics(TRANSFORMED_TOPICS, "READ"), Grant("group", API_GROUP_PREFIX, "READ"), *_PROGRESS),
    # the supervisor DAG and Airflow's health view: the daemons' lag, nothing else
    "airflow": _PROGRESS,
}
SCRAM_USERS = (*GRANTS, ADMIN)

# `cryptopipe <command>` -> the identity it runs as (supervisord, tests and the bench use it)
COMMAND_IDENTITIES = {"transform": "transform", "load": "load", "archive": "archive", "serve": "api"}


def password_key(identity: str) -> str:
    """The stack.env variable holding `identity`'s generated password."""
    return "CRYPTOPIPE_KAFKA_PASSWORD_" + identity.upper().replace("-", "_")


def password_keys() -> tuple[str, ...]:
    return tuple(password_key(i) for i in (*SCRAM_USERS, BROKER))


def identity_of_command(argv: list[str]) -> str | None:
    """`["extract", "binance", ...]` -> "extract-binance"; `["load", ...]` -> "load"; else None."""
    if not argv:
        return None
    if argv[0] == "extract" and len(argv) > 1:
        name = f"extract-{argv[1]}"
        return name if name in GRANTS else None
    return COMMAND_IDENTITIES.get(argv[0])


def client_env(identity: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The settings that make a process talk to Kafka as `identity` (env: the stack's generated
    values; default: read from stack.env)."""
    if env is None:
        from cryptopipe.stack.paths import get_paths
        from cryptopipe.stack.secrets import read_env_file

        env = read_env_file(get_paths().env_file)
    password = env.get(password_key(identity))
    if not password:
        raise KeyError(f"no {password_key(identity)} in the stack's env: run `make up` (or `cryptopipe stack up --core`)")
    return {"KAFKA_SECURITY_PROTOCOL": SECURITY_PROTOCOL, "KAFKA_SASL_MECHANISM": MECHANISM,
            "KAFKA_SASL_USERNAME": identity, "KAFKA_SASL_PASSWORD": password}


# ----------------------------------------------------------------------------- ACL bindings

def desired_bindings() -> set[tuple]:
    """Every (resource type, name, pattern type, principal, host, operation, permission) the
    identities need, as confluent-kafka enum values."""
    from confluent_kafka.admin import AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    types = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
             "transactional_id": ResourceType.TRANSACTIONAL_ID}
    return {(types[g.resource], g.prefix, ResourcePatternType.PREFIXED, f"User:{identity}", "*",
             AclOperation[g.operation], AclPermissionType.ALLOW)
            for identity, grants in GRANTS.items() for g in grants}


def _key(binding) -> tuple:
    return (binding.restype, binding.name, binding.resource_pattern_type, binding.principal, binding.host,
            binding.operation, binding.permission_type)


def _all_acls(admin, timeout: float) -> list:
    from confluent_kafka.admin import (AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType,
                                       ResourceType)

    flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                           AclPermissionType.ANY)
    return admin.describe_acls(flt, request_timeout=timeout).result(timeout=2 * timeout)


def _scram_users(admin, timeout: float) -> set[str]:
    return set(admin.describe_user_scram_credentials(request_timeout=timeout).result(timeout=2 * timeout))


def _fingerprint(user: str, password: str) -> str:
    return hashlib.sha256(f"{MECHANISM}:{user}:{password}".encode()).hexdigest()


def reconcile(admin, passwords: dict[str, str], applied: Path | None, timeout: float = 30.0) -> dict:
    """Make the broker's SCRAM users and the identities' ACLs what this module says: upsert users
    that are missing or whose password changed (`applied` remembers a fingerprint of what was set;
    None: upsert them all), create missing ACLs, delete our identities' ACLs that are no longer
    wanted. Other principals' ACLs and users are left alone. Returns what it changed."""
    from confluent_kafka.admin import (AclBinding, AclBindingFilter, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)

    done = json.loads(applied.read_text()) if applied is not None and applied.exists() else {}
    present = _scram_users(admin, timeout)
    upserts = [u for u in SCRAM_USERS if u not in present or done.get(u) != _fingerprint(u, passwords[u])]
    if upserts:
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
        futures = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(u, info, passwords[u].encode()) for u in upserts], request_timeout=timeout)
        for f in futures.values():
            f.result(timeout=2 * timeout)
        if applied is not None:
            done.update({u: _fingerprint(u, passwords[u]) for u in upserts})
            applied.write_text(json.dumps(done, sort_keys=True))
            applied.chmod(0o600)

    ours = {f"User:{i}" for i in GRANTS}
    wanted = desired_bindings()
    existing = {_key(b) for b in _all_acls(admin, timeout)}
    stale = [k for k in existing if k[3] in ours and k not in wanted]
    missing = [k for k in wanted if k not in existing]
    if stale:
        for f in admin.delete_acls([AclBindingFilter(*k) for k in stale], request_timeout=timeout).values():
            f.result(timeout=2 * timeout)
    if missing:
        for f in admin.create_acls([AclBinding(*k) for k in missing], request_timeout=timeout).values():
            f.result(timeout=2 * timeout)
    return {"users_set": upserts, "acls_created": len(missing), "acls_deleted": len(stale)}


def summary(admin, timeout: float = 10.0) -> dict:
    """{"users": SCRAM users on the broker, "acls": ACL bindings} for `stack status`."""
    return {"users": len(_scram_users(admin, timeout)), "acls": len(_all_acls(admin, timeout))}


def broker_settings(bootstrap: str, broker_password: str):
    """Settings for a client that is the broker's own identity (PLAIN, the internal listener)."""
    from common.settings import Settings

    return Settings(kafka_bootstrap_servers=bootstrap, kafka_security_protocol=SECURITY_PROTOCOL,
                    kafka_sasl_mechanism="PLAIN", kafka_sasl_username=BROKER, kafka_sasl_password=broker_password)


def main(argv: list[str] | None = None) -> int:
    """`python -m cryptopipe.stack.kafka_auth --bootstrap HOST:PORT`: the SCRAM users and ACLs, set
    as `broker` through the broker's internal listener, passwords from CRYPTOPIPE_KAFKA_PASSWORD_*
    in the environment (docker-compose's `init`; the native stack does this in Kafka.after_start)."""
    import argparse
    import os

    from common.kafka import make_admin

    p = argparse.ArgumentParser(prog="python -m cryptopipe.stack.kafka_auth")
    p.add_argument("--bootstrap", required=True, help="the broker's INTERNAL listener")
    args = p.parse_args(argv)
    missing = [k for k in password_keys() if not os.environ.get(k)]
    if missing:
        print(f"kafka_auth: set {', '.join(missing)}", file=sys.stderr)
        return 2
    admin = make_admin(settings=broker_settings(args.bootstrap, os.environ[password_key(BROKER)]))
    done = reconcile(admin, {u: os.environ[password_key(u)] for u in SCRAM_USERS}, None, timeout=60.0)
    print(f"kafka_auth: users set {done['users_set']}, ACLs created {done['acls_created']}, "
          f"deleted {done['acls_deleted']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
