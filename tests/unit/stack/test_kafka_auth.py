"""Who may do what on the stack's Kafka (cryptopipe/stack/kafka_auth.py), the broker's listeners
(cryptopipe/stack/kafka.py) and how each program gets its identity. The real broker holds the
same policy in tests/integration/stack/test_kafka_auth.py."""
import re
from concurrent.futures import Future
from pathlib import Path

import pytest
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, ResourcePatternType,
                                   ResourceType)

from common.topics import ALL_TOPICS
from cryptopipe.stack import kafka_auth
from cryptopipe.stack.component import StackContext
from cryptopipe.stack.kafka_auth import (ADMIN, BROKER, GRANTS, SCRAM_USERS, client_env, desired_bindings,
                                         identity_of_command, password_key, password_keys)
from cryptopipe.stack.paths import Paths
from cryptopipe.stack.progress import StepFailed
from cryptopipe.stack.secrets import ensure_generated

ROOT = Path(__file__).resolve().parents[3]
PIPELINE_CONF = ROOT / "streaming" / "supervisord.conf"


def ctx(tmp_path, env=None) -> StackContext:
    return StackContext(paths=Paths(home=tmp_path / ".stack", cache=tmp_path / "cache"),
                        env=env if env is not None else ensure_generated({}))


def test_commands_map_to_their_program_identity():
    assert identity_of_command(["extract", "binance", "--label", "x"]) == "extract-binance"
    assert identity_of_command(["extract", "kucoin"]) == "extract-kucoin"
    assert identity_of_command(["extract", "kraken"]) is None
    assert [identity_of_command([c]) for c in ("transform", "load", "archive", "serve")] == [
        "transform", "load", "archive", "api"]
    assert identity_of_command(["peek", "sql"]) is None and identity_of_command([]) is None


def test_grants_cover_the_daemons_default_groups_and_transactional_ids():
    from streaming import archiver, loader, transformer

    def covered(identity, resource, name, operation):
        return any(g.resource == resource and name.startswith(g.prefix) and g.operation == operation
                   for g in GRANTS[identity])

    assert covered("transform", "group", transformer.DEFAULT_GROUP, "READ")
    assert covered("transform", "transactional_id", transformer.default_transactional_id(transformer.DEFAULT_GROUP, "0"),
                   "WRITE")
    # a test's or the bench's group named after the default one gets its transactional id too
    assert covered("transform", "transactional_id", transformer.default_transactional_id(
        transformer.DEFAULT_GROUP + "-test-1", "a"), "WRITE")
    assert covered("load", "group", loader.DEFAULT_GROUP, "READ")
    assert covered("archive", "group", archiver.DEFAULT_GROUP, "READ")
    from plugins.supervision import DEFAULT_GROUPS

    for program, group in DEFAULT_GROUPS.items():
        assert covered("airflow", "group", group, "DESCRIBE"), program


def test_policy_each_identity_writes_only_what_it_owns():
    writes = {i: {g.prefix for g in grants if g.operation == "WRITE" and g.resource == "topic"}
              for i, grants in GRANTS.items()}
    assert writes == {
        "extract-binance": {"binance_raw_data", "pipeline_events"},
        "extract-kucoin": {"kucoin_raw_data", "pipeline_events"},
        "transform": {"binance_transformed_data", "kucoin_transformed_data", "binance_dlq", "kucoin_dlq"},
        "load": {"binance_dlq", "kucoin_dlq"},
        "archive": set(), "api": set(), "airflow": set(),
    }
    assert {g.operation for g in GRANTS["airflow"]} == {"DESCRIBE"}
    assert [i for i, grants in GRANTS.items() if any(g.resource == "transactional_id" for g in grants)] == ["transform"]
    # every topic pattern is one of DESIGN.md's names: a prefix opens that family only
    assert {g.prefix for grants in GRANTS.values() for g in grants if g.resource == "topic"} <= set(ALL_TOPICS)
    assert all(b[2] == ResourcePatternType.PREFIXED and b[6] == AclPermissionType.ALLOW for b in desired_bindings())
    assert ADMIN not in GRANTS and BROKER not in GRANTS     # super users need no ACLs


def test_every_identity_gets_a_generated_password_and_existing_ones_are_kept():
    first = ensure_generated({})
    assert all(len(first[k]) >= 24 for k in password_keys())
    assert len({first[k] for k in password_keys()}) == len(password_keys())
    again = ensure_generated(first)
    assert {k: again[k] for k in password_keys()} == {k: first[k] for k in password_keys()}
    assert password_key("extract-binance") == "CRYPTOPIPE_KAFKA_PASSWORD_EXTRACT_BINANCE"


def test_client_env_names_the_identity_and_a_missing_password_is_a_clear_error():
    env = ensure_generated({})
    assert client_env("load", env) == {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                       "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "load",
                                       "KAFKA_SASL_PASSWORD": env[password_key("load")]}
    with pytest.raises(KeyError, match="CRYPTOPIPE_KAFKA_PASSWORD_LOAD"):
        client_env("load", {})


def test_each_pipeline_program_talks_as_itself():
    conf = PIPELINE_CONF.read_text()
    programs = re.findall(r"^\[program:([\w-]+)\]", conf, re.M)
    for program in programs:
        section = conf.split(f"[program:{program}]", 1)[1].split("[program:", 1)[0]
        env = re.search(r"^environment=(.*)$", section, re.M).group(1).split(",")
        assert f'KAFKA_SASL_USERNAME="{program}"' in env, program
        assert f'KAFKA_SASL_PASSWORD="%(ENV_{password_key(program)})s"' in env, program
        assert program in GRANTS


def test_generated_supervisord_conf_fills_in_each_programs_password(tmp_path):
    from cryptopipe.stack import supervisor

    c = ctx(tmp_path)
    c.env[password_key("load")] = "with%percent"
    text = supervisor.pipeline_sections(c)
    assert "%(ENV_CRYPTOPIPE_KAFKA_PASSWORD" not in text
    assert f'KAFKA_SASL_PASSWORD="{c.env[password_key("transform")]}"' in text
    assert 'KAFKA_SASL_PASSWORD="with%%percent"' in text        # supervisord's escape
    assert "%(ENV_CRYPTOPIPE_HOME)s" in text                     # other expansions stay supervisord's
    del c.env[password_key("archive")]
    with pytest.raises(StepFailed, match="CRYPTOPIPE_KAFKA_PASSWORD_ARCHIVE"):
        supervisor.pipeline_sections(c)


def test_broker_listeners_are_loopback_and_authenticated(tmp_path, monkeypatch):
    from cryptopipe.stack.kafka import nodes, server_properties

    monkeypatch.delenv("KAFKA_BROKERS", raising=False)
    c = ctx(tmp_path)
    props = dict(line.split("=", 1) for line in server_properties(c, nodes(c)[0], nodes(c)).splitlines() if line)
    listeners = dict(item.split("://") for item in props["listeners"].split(","))
    assert set(listeners) == {"CLIENT", "CONTROLLER", "TOXI", "INTERNAL"}
    assert all(addr.startswith("127.0.0.1:") for addr in listeners.values())
    protocols = dict(item.split(":") for item in props["listener.security.protocol.map"].split(","))
    assert protocols == {name: "SASL_PLAINTEXT" for name in listeners}
    assert props["listener.name.internal.sasl.enabled.mechanisms"] == "PLAIN"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"      # CLIENT and TOXI
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:broker;User:admin"
    broker_pw = c.env[password_key(BROKER)]
    assert [k for k, v in props.items() if broker_pw in v] == [
        "listener.name.internal.plain.sasl.jaas.config", "listener.name.controller.plain.sasl.jaas.config"]


# ----------------------------------------------------------------------------- reconcile

def _done(value=None) -> Future:
    f = Future()
    f.set_result(value)
    return f


class FakeAdmin:
    """The AdminClient calls reconcile() makes, over in-memory users and ACL tuples."""

    def __init__(self, users=(), acls=()):
        self.users = set(users)
        self.acls = set(acls)
        self.upserted: list[str] = []

    def describe_user_scram_credentials(self, request_timeout=None):
        return _done({u: object() for u in self.users})

    def alter_user_scram_credentials(self, alterations, request_timeout=None):
        for a in alterations:
            self.users.add(a.user)
            self.upserted.append(a.user)
        return {a.user: _done() for a in alterations}

    def describe_acls(self, _filter, request_timeout=None):
        return _done([AclBinding(*k) for k in self.acls])

    def delete_acls(self, filters, request_timeout=None):
        for f in filters:
            self.acls.discard(kafka_auth._key(f))
        return {f: _done() for f in filters}

    def create_acls(self, bindings, request_timeout=None):
        self.acls |= {kafka_auth._key(b) for b in bindings}
        return {b: _done() for b in bindings}


def test_reconcile_creates_users_and_acls_then_is_a_no_op(tmp_path):
    env = ensure_generated({})
    passwords = {u: env[password_key(u)] for u in SCRAM_USERS}
    applied = tmp_path / "applied.json"
    admin = FakeAdmin()
    first = kafka_auth.reconcile(admin, passwords, applied)
    assert sorted(first["users_set"]) == sorted(SCRAM_USERS)
    assert admin.acls == desired_bindings() and first["acls_created"] == len(desired_bindings())
    assert oct(applied.stat().st_mode & 0o777) == "0o600"
    assert kafka_auth.reconcile(admin, passwords, applied) == {"users_set": [], "acls_created": 0, "acls_deleted": 0}


def test_reconcile_resets_a_changed_or_lost_user_and_drops_stale_acls_of_ours_only(tmp_path):
    env = ensure_generated({})
    passwords = {u: env[password_key(u)] for u in SCRAM_USERS}
    applied = tmp_path / "applied.json"
    ours_stale = (ResourceType.TOPIC, "kucoin_raw_data", ResourcePatternType.PREFIXED, "User:archive", "*",
                  AclOperation.WRITE, AclPermissionType.ALLOW)
    someone_elses = (ResourceType.TOPIC, "x", ResourcePatternType.LITERAL, "User:operator", "*",
                     AclOperation.READ, AclPermissionType.ALLOW)
    admin = FakeAdmin()
    kafka_auth.reconcile(admin, passwords, applied)
    admin.acls |= {ours_stale, someone_elses}
    admin.users.discard("api")
    passwords["load"] = "rotated"
    again = kafka_auth.reconcile(admin, passwords, applied)
    assert sorted(again["users_set"]) == ["api", "load"]
    assert again["acls_deleted"] == 1 and ours_stale not in admin.acls and someone_elses in admin.acls


def test_reconcile_without_a_record_sets_every_user(tmp_path):
    env = ensure_generated({})
    admin = FakeAdmin(users=SCRAM_USERS)
    done = kafka_auth.reconcile(admin, {u: env[password_key(u)] for u in SCRAM_USERS}, None)
    assert sorted(done["users_set"]) == sorted(SCRAM_USERS)
