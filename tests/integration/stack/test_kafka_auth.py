"""Kafka asks who is writing (issue 14), on the stack's real broker: every listener wants SASL
credentials, a wrong password or an unknown user is refused, and each daemon identity can do
only its own job (cryptopipe/stack/kafka_auth.py). That every daemon *can* do its job is proven
by the integration tests that run the daemons as their identities (transformer, loader,
archiver, extractor, faults)."""
import socket
import struct
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

from common.kafka import create_topics, delete_topics, make_admin, make_consumer, make_producer
from common.settings import Settings
from cryptopipe.stack.kafka_auth import ADMIN, BROKER, GRANTS, client_env, desired_bindings, password_key
from cryptopipe.stack.paths import KAFKA_CONTROLLER_PORT, KAFKA_INTERNAL_PORT, KAFKA_PORT, KAFKA_TOXI_PORT

pytestmark = pytest.mark.integration

QUIET = {"log_level": 0}


def as_identity(identity: str, port: int = KAFKA_PORT) -> Settings:
    env = {k.lower(): v for k, v in client_env(identity).items()}
    return Settings(kafka_bootstrap_servers=f"127.0.0.1:{port}", **env)


def anonymous(port: int) -> Settings:
    return Settings(kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_security_protocol="PLAINTEXT")


def login(port: int, user: str, password: str, mechanism: str = "SCRAM-SHA-512") -> Settings:
    return Settings(kafka_bootstrap_servers=f"127.0.0.1:{port}", kafka_sasl_mechanism=mechanism,
                    kafka_sasl_username=user, kafka_sasl_password=password)


def refused(settings: Settings) -> list[KafkaError]:
    """Asks for metadata; asserts it is refused and returns the client's errors (authentication
    failures are reported through error_cb)."""
    errors: list[KafkaError] = []
    admin = make_admin({**QUIET, "error_cb": errors.append}, settings=settings)
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=2)
    admin.poll(0.5)
    return errors


def auth_failed(errors: list[KafkaError]) -> bool:
    return any(e.code() == KafkaError._AUTHENTICATION for e in errors)


def produce_error(settings: Settings, topic: str, idempotent: bool = True) -> KafkaError | None:
    """The delivery error of one record written to `topic` as `settings` (None = delivered).
    (An idempotent producer of an identity that may write nowhere does not even get a producer
    id: a fatal CLUSTER_AUTHORIZATION_FAILED; readers are probed without idempotence.)"""
    out = []
    producer = make_producer({**QUIET, "message.timeout.ms": 10_000, "enable.idempotence": idempotent},
                             settings=settings)
    producer.produce(topic, value=b"probe", on_delivery=lambda err, _msg: out.append(err))
    producer.flush(20)
    assert out, f"no delivery report for {topic}"
    return out[0]


@pytest.fixture(scope="module")
def private_topic(stack):
    """A raw-family topic of our own (`binance_raw_data_auth...`) and a look-alike outside every family."""
    suffix = "_auth" + uuid.uuid4().hex[:8]
    names = {"binance_raw_data" + suffix: 1, "x_binance_raw_data" + suffix: 1}
    create_topics(names)
    yield "binance_raw_data" + suffix, "x_binance_raw_data" + suffix
    delete_topics(names)


# ----------------------------------------------------------------------------- who

@pytest.mark.parametrize("port", [KAFKA_PORT, KAFKA_TOXI_PORT, KAFKA_INTERNAL_PORT])
def test_anonymous_client_cannot_list_topics(stack, port):
    refused(anonymous(port))


def test_anonymous_client_cannot_produce_or_consume(stack, private_topic):
    topic = private_topic[0]
    producer = make_producer()
    producer.produce(topic, value=b"probe")
    assert producer.flush(15) == 0

    anon = make_producer({**QUIET, "message.timeout.ms": 5_000, "enable.idempotence": False},
                         settings=anonymous(KAFKA_PORT))
    errors = []
    anon.produce(topic, value=b"anonymous", on_delivery=lambda err, _m: errors.append(err))
    anon.flush(15)
    assert errors and errors[0] is not None and errors[0].code() == KafkaError._MSG_TIMED_OUT

    def read(settings: Settings | None) -> list[bytes]:
        consumer = make_consumer("auth-" + uuid.uuid4().hex, QUIET, settings=settings)
        consumer.assign([TopicPartition(topic, 0, 0)])
        got = [m.value() for m in consumer.consume(100, timeout=5) if not m.error()]
        consumer.close()
        return got

    assert read(anonymous(KAFKA_PORT)) == []
    assert b"probe" in read(None)      # admin reads it: the emptiness above is the refusal


@pytest.mark.parametrize("port", [KAFKA_PORT, KAFKA_TOXI_PORT])
def test_wrong_password_and_unknown_user_are_refused(stack, port):
    assert auth_failed(refused(login(port, ADMIN, "not-the-password")))
    assert auth_failed(refused(login(port, "mallory", "whatever")))
    assert make_admin(QUIET, settings=as_identity(ADMIN, port)).list_topics(timeout=10).topics


def test_broker_listeners_accept_only_the_broker_identity(stack, stack_ctx):
    admin_password = stack_ctx.env[password_key(ADMIN)]
    for port in (KAFKA_INTERNAL_PORT, KAFKA_CONTROLLER_PORT):
        # SCRAM is not offered there, and PLAIN knows only `broker`
        assert auth_failed(refused(login(port, ADMIN, admin_password)))
        assert auth_failed(refused(login(port, BROKER, "not-the-password", "PLAIN")))
        assert auth_failed(refused(login(port, ADMIN, admin_password, "PLAIN")))
    # and the client listener does not take the broker's PLAIN login
    assert auth_failed(refused(login(KAFKA_PORT, BROKER, stack_ctx.env[password_key(BROKER)], "PLAIN")))


def _request(sock: socket.socket, api_key: int, version: int, body: bytes, flexible: bool) -> bytes | None:
    """One Kafka request on a raw socket; the response payload, or None when the broker closed the
    connection instead of answering."""
    client_id = b"auth-test"
    header = struct.pack(">hhih", api_key, version, 7, len(client_id)) + client_id + (b"\x00" if flexible else b"")
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = sock.recv(4)
    if len(size) < 4:
        return None
    want, data = struct.unpack(">i", size)[0], b""
    while len(data) < want:
        chunk = sock.recv(want - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def test_controller_listener_is_no_anonymous_back_door(stack):
    """KIP-919 lets admin clients talk to controllers (DescribeCluster, configs, ...). Without a
    SASL login the controller answers ApiVersions (allowed before authentication) and closes the
    connection on the first real request."""
    with socket.create_connection(("127.0.0.1", KAFKA_CONTROLLER_PORT), timeout=10) as sock:
        assert _request(sock, 18, 0, b"", flexible=False), "no ApiVersions answer: the probe itself is broken"
        # DescribeCluster v0: include_cluster_authorized_operations=false, no tagged fields
        assert _request(sock, 60, 0, b"\x00\x00", flexible=True) is None


# ----------------------------------------------------------------------------- what

def test_daemon_cannot_write_a_topic_it_does_not_own(stack, private_topic):
    ours, look_alike = private_topic
    extract = as_identity("extract-binance")
    assert produce_error(extract, "binance_raw_data") is None
    assert produce_error(extract, ours) is None            # the family the PREFIXED pattern opens
    for topic in ("kucoin_raw_data", "binance_transformed_data", "binance_dlq", look_alike):
        err = produce_error(extract, topic)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, err)


@pytest.mark.parametrize("identity", ["archive", "api", "airflow"])
def test_readers_write_nothing(stack, identity):
    for topic in ("binance_raw_data", "kucoin_transformed_data", "binance_dlq", "pipeline_events"):
        err = produce_error(as_identity(identity), topic, idempotent=False)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (identity, topic, err)


def test_each_daemon_reads_only_what_it_consumes(stack):
    from common.topics import ALL_TOPICS

    expected = {
        "extract-binance": {"binance_raw_data", "pipeline_events"},
        "archive": {"binance_raw_data", "kucoin_raw_data"},
        # the prices server also describes the topics whose lag /v1/health shows (it reads none of them)
        "api": {"binance_transformed_data", "kucoin_transformed_data", "binance_raw_data", "kucoin_raw_data",
                "pipeline_events"},
        "load": {"binance_transformed_data", "kucoin_transformed_data", "pipeline_events", "binance_dlq",
                 "kucoin_dlq"},
    }
    for identity, topics in expected.items():
        consumer = make_consumer("api-probe-" + uuid.uuid4().hex, QUIET, settings=as_identity(identity))
        visible = {t for t in consumer.list_topics(timeout=10).topics if not t.startswith("__")}
        consumer.close()
        assert visible & set(ALL_TOPICS) == topics, identity
        # other tests' private topics may exist: only those of its own families
        assert all(any(t.startswith(name) for name in topics) for t in visible), (identity, visible)


@pytest.mark.parametrize("identity,topic", [("api", "binance_raw_data"), ("airflow", "kucoin_transformed_data"),
                                            ("airflow", "pipeline_events"), ("extract-binance", "binance_raw_data")])
def test_describing_a_topic_is_not_reading_it(stack, identity, topic):
    """Identities that may describe (or write) a topic but not read it: the fetch is refused.
    (A topic an identity may not even describe does not exist for it: see the test above.)"""
    consumer = make_consumer("api-" + uuid.uuid4().hex, QUIET, settings=as_identity(identity))
    consumer.assign([TopicPartition(topic, 0, 0)])
    errors = []
    for _ in range(20):
        msg = consumer.poll(0.5)
        if msg is not None and msg.error():
            errors.append(msg.error().code())
            if errors[-1] == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                break
        else:
            assert msg is None, f"{identity} read a record of {topic}"
    consumer.close()
    assert KafkaError.TOPIC_AUTHORIZATION_FAILED in errors, errors


def test_a_daemon_cannot_join_another_daemons_group(stack):
    consumer = make_consumer("loader", QUIET, settings=as_identity("transform"))
    consumer.subscribe(["binance_raw_data"])        # a topic it may read, a group it may not use
    errors = []
    for _ in range(40):
        msg = consumer.poll(0.5)
        if msg is not None and msg.error():
            errors.append(msg.error().code())
            break
    consumer.close()
    assert errors == [KafkaError.GROUP_AUTHORIZATION_FAILED]


def test_airflow_reads_the_daemons_progress_and_nothing_else(stack):
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import OffsetSpec

    admin = make_admin(QUIET, settings=as_identity("airflow"))
    tps = [TopicPartition("binance_raw_data", p) for p in range(3)]
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=15)
    assert all(f.result().offset >= 0 for f in ends.values())
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("transformer", tps)],
                                               request_timeout=15)["transformer"].result()
    assert len(result.topic_partitions) == 3
    with pytest.raises(KafkaException) as exc:
        admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("someone-else", tps)],
                                          request_timeout=15)["someone-else"].result()
    assert exc.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED


@pytest.mark.parametrize("identity", sorted(GRANTS))
def test_no_daemon_identity_creates_topics_or_grants_itself_more(stack, identity):
    admin = make_admin(QUIET, settings=as_identity(identity))
    name = "binance_raw_data_grab" + uuid.uuid4().hex[:6]
    from confluent_kafka.admin import NewTopic

    with pytest.raises(KafkaException) as exc:
        admin.create_topics([NewTopic(name, 1, 1)], operation_timeout=10)[name].result(timeout=30)
    assert exc.value.args[0].code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)
    grab = AclBinding(ResourceType.TOPIC, "", ResourcePatternType.PREFIXED, f"User:{identity}", "*",
                      AclOperation.ALL, AclPermissionType.ALLOW)
    with pytest.raises(KafkaException) as exc:
        admin.create_acls([grab], request_timeout=15)[grab].result(timeout=30)
    assert exc.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED


# ----------------------------------------------------------------------------- the stack's side

def test_users_and_acls_are_what_kafka_auth_says_and_up_is_idempotent(stack, stack_ctx):
    from cryptopipe.stack.kafka import broker_admin
    from cryptopipe.stack.kafka_auth import SCRAM_USERS, reconcile, summary

    admin = broker_admin(stack_ctx)
    passwords = {u: stack_ctx.env[password_key(u)] for u in SCRAM_USERS}
    again = reconcile(admin, passwords, stack_ctx.paths.kafka_dir / "scram-applied.json")
    assert again == {"users_set": [], "acls_created": 0, "acls_deleted": 0}
    counts = summary(admin)
    assert counts["users"] >= len(SCRAM_USERS)
    assert counts["acls"] >= len(desired_bindings())


def test_a_lost_user_comes_back_with_the_next_up(stack, stack_ctx):
    """What upgrades a stack formatted before Kafka had users: `up` creates whatever is missing."""
    from confluent_kafka.admin import ScramMechanism, UserScramCredentialDeletion

    from cryptopipe.stack.kafka import broker_admin
    from tests.plugins.stack import core_up

    broker = broker_admin(stack_ctx)
    for f in broker.alter_user_scram_credentials(
            [UserScramCredentialDeletion("api", ScramMechanism.SCRAM_SHA_512)]).values():
        f.result(timeout=30)
    assert auth_failed(refused(as_identity("api")))
    core_up()
    assert make_admin(QUIET, settings=as_identity("api")).list_topics(timeout=10).topics


def test_pipeline_programs_run_as_their_own_identity(stack, stack_ctx):
    """The generated supervisord config gives each daemon its own user and password, and keeps
    the passwords out of supervisord's own environment (which every service inherits)."""
    import configparser

    from cryptopipe.stack import supervisor

    conf = configparser.RawConfigParser()
    conf.read_string(stack_ctx.paths.supervisor_conf.read_text())
    for program in supervisor.PIPELINE_PROGRAMS:
        env = conf.get(f"program:{program}", "environment")
        assert f'KAFKA_SASL_USERNAME="{program}"' in env
        assert f'KAFKA_SASL_PASSWORD="{stack_ctx.env[password_key(program)]}"' in env
    supervisord_env = supervisor.supervisord_env(stack_ctx)
    assert not [k for k in supervisord_env if k.startswith("CRYPTOPIPE_KAFKA_PASSWORD")]


def test_kafka_passwords_are_not_in_tracked_files(stack, stack_ctx):
    import subprocess

    for identity in (*GRANTS, ADMIN, BROKER):
        secret = stack_ctx.env[password_key(identity)]
        tracked = subprocess.run(["git", "grep", "-l", secret], capture_output=True, text=True,
                                 cwd=stack_ctx.paths.home.parent)
        assert tracked.stdout == "", f"{identity}'s Kafka password is in a tracked file"
