"""The foundation on the real services: Kafka, Postgres, S3, supervisord."""
import json
import os
import stat
import subprocess
import sys
import uuid

import psutil
import pytest
from confluent_kafka import TopicPartition

from common.kafka import make_consumer, make_producer
from common.topics import ALL_TOPICS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("topic", ALL_TOPICS)
def test_kafka_round_trip_on_each_topic(stack, topic):
    payload = f"probe-{uuid.uuid4()}".encode()
    consumer = make_consumer(f"test-roundtrip-{uuid.uuid4()}")
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    producer = make_producer()
    producer.produce(topic, value=payload, key=b"probe", partition=0, headers={"probe": b"1"})
    assert producer.flush(15) == 0
    consumer.assign([TopicPartition(topic, 0, high)])
    got = None
    for _ in range(50):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error() and msg.value() == payload:
            got = msg
            break
    consumer.close()
    assert got is not None, f"did not read back the probe from {topic}"
    assert got.headers() == [("probe", b"1")]


def test_topics_have_design_partitions(kafka_admin):
    md = kafka_admin.list_topics(timeout=10).topics
    assert len(md["binance_raw_data"].partitions) == 3
    assert len(md["kucoin_transformed_data"].partitions) == 3
    assert len(md["pipeline_events"].partitions) == 1


@pytest.fixture
def scratch_db(stack_ctx):
    from cryptopipe.stack.postgres import Postgres, dsn_for

    pg = Postgres()
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    pg.psql(stack_ctx, f"CREATE DATABASE {name} OWNER cryptopipe")
    yield dsn_for(stack_ctx, "cryptopipe").rsplit("/", 1)[0] + "/" + name
    pg.psql(stack_ctx, f"DROP DATABASE {name} WITH (FORCE)")


def test_migrations_apply_from_empty_then_are_a_no_op(scratch_db):
    from common.db import connect, migrate, migration_files

    applied = migrate(scratch_db)
    assert applied == [p.stem for p in migration_files()]
    assert migrate(scratch_db) == []
    conn = connect(scratch_db)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        tables = {r[0] for r in cur.fetchall()}
        cur.execute("SELECT count(*) FROM schema_migrations")
        assert cur.fetchone()[0] == len(applied)
    conn.close()
    assert {"ticks", "latest_prices", "candles_1m", "stream_sessions", "gaps", "schema_migrations"} <= tables


def test_an_edited_applied_migration_is_refused(scratch_db):
    from common.db import connect, migrate

    migrate(scratch_db)
    conn = connect(scratch_db)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = '001_core_tables'")
    conn.close()
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        migrate(scratch_db)


def test_ticks_numeric_and_partitions(pg):
    with pg.cursor() as cur:
        cur.execute("SELECT data_type FROM information_schema.columns WHERE table_name='ticks' AND column_name='price'")
        assert cur.fetchone()[0] == "numeric"
        cur.execute("SELECT data_type FROM information_schema.columns WHERE table_name='ticks' AND column_name='event_time'")
        assert cur.fetchone()[0] == "timestamp with time zone"
        cur.execute("SELECT ensure_ticks_partition('2001-01-01'::date)")
        assert cur.fetchone()[0] == "ticks_20010101"
        cur.execute("SELECT drop_ticks_partitions_before('2001-01-02'::date)")
        assert cur.fetchone()[0] >= 1
        cur.execute("SELECT to_regclass('ticks_20010101')")
        assert cur.fetchone()[0] is None


def test_s3_put_get_list(s3, stack):
    bucket = stack.s3_bucket
    prefix = f"test/{uuid.uuid4()}/"
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"{prefix}{i}.txt", Body=f"hello {i}".encode())
    assert s3.get_object(Bucket=bucket, Key=f"{prefix}1.txt")["Body"].read() == b"hello 1"
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert listed == [f"{prefix}{i}.txt" for i in range(3)]
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in listed]})


def test_s3_rejects_a_wrong_secret(stack):
    from botocore.exceptions import ClientError

    from common.s3 import make_s3_client

    bad = make_s3_client(aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as err:
        bad.list_objects_v2(Bucket=stack.s3_bucket)
    assert err.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied")


def test_supervisord_program_states_over_xmlrpc(stack, stack_ctx):
    from common.supervisor_rpc import supervisor_proxy

    proxy = supervisor_proxy(str(stack_ctx.paths.supervisor_socket))
    infos = {i["name"]: i for i in proxy.supervisor.getAllProcessInfo()}
    for name in ("extract-binance", "extract-kucoin", "transform", "load", "archive"):
        assert infos[name]["group"] == "pipeline"
    for name in ("kafka", "postgres", "s3proxy"):
        assert infos[name]["statename"] == "RUNNING"


def test_secrets_are_private_and_not_in_the_repo(stack, stack_ctx):
    env_file = stack_ctx.paths.env_file
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(stack_ctx.paths.supervisor_conf.stat().st_mode) == 0o600
    sock_mode = stat.S_IMODE(os.stat(stack_ctx.paths.supervisor_socket).st_mode)
    assert sock_mode & 0o077 == 0, "supervisord socket must not be reachable by other users"
    secret = stack_ctx.env["CRYPTOPIPE_PG_PASSWORD"]
    tracked = subprocess.run(["git", "grep", "-l", secret], capture_output=True, text=True,
                             cwd=stack_ctx.paths.home.parent)
    assert tracked.stdout == "", "a generated secret is in a tracked file"
    ignored = subprocess.run(["git", "check-ignore", str(stack_ctx.paths.home)], capture_output=True,
                             cwd=stack_ctx.paths.home.parent)
    assert ignored.returncode == 0, ".stack must be git-ignored"


def test_services_listen_on_loopback_only(stack, stack_ctx):
    from common.supervisor_rpc import supervisor_proxy

    pids = {i["pid"] for i in supervisor_proxy(str(stack_ctx.paths.supervisor_socket)).supervisor.getAllProcessInfo()
            if i["pid"]}
    family = set()
    for pid in pids:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
        family |= {p.pid for p in procs}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.pid in family]
    assert listening, "expected the stack's services to listen somewhere"
    for c in listening:
        assert c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), f"pid {c.pid} listens on {c.laddr}"


def test_status_json_is_stable_and_healthy(stack):
    out = subprocess.run([sys.executable, "-m", "cryptopipe", "stack", "status", "--json"],
                         capture_output=True, text=True, timeout=60)
    st = json.loads(out.stdout)
    # healthy exactly when every program the stack expects runs (a developer's stack may expect
    # the pipeline too, stopped at this point of the suite); the exit code says the same
    expected_down = sorted(p for p, v in st["programs"].items() if v["expected"] and v["state"] != "RUNNING")
    assert st["healthy"] is (not expected_down), expected_down
    assert out.returncode == (0 if st["healthy"] else 3), out.stderr
    for name in ("kafka", "postgres", "s3"):
        assert st["components"][name]["state"] == "RUNNING"
        assert st["components"][name]["healthy"] is True
    from cryptopipe.stack.paths import KAFKA_PORT, PORT_OFFSET

    assert KAFKA_PORT == 9092 + PORT_OFFSET
    assert st["components"]["kafka"]["address"] == f"127.0.0.1:{KAFKA_PORT}"


def test_second_up_is_idempotent(stack, stack_ctx):
    from cryptopipe.stack import supervisor
    from tests.plugins.stack import core_up

    before = supervisor.program_states(stack_ctx)
    core_up()
    after = supervisor.program_states(stack_ctx)
    assert set(before) == set(after)
    for name in ("kafka", "postgres", "s3proxy"):
        assert before[name]["pid"] == after[name]["pid"], f"{name} was restarted by a no-op up"


def test_a_taken_port_is_a_clear_error(stack_ctx):
    import socket

    from cryptopipe.stack.component import Component
    from cryptopipe.stack.manager import check_port_free
    from cryptopipe.stack.progress import StepFailed

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()

    class Probe(Component):
        name = "probe"
        program = "probe-not-in-supervisord"
        port = squatter.getsockname()[1]

    with pytest.raises(StepFailed, match=f"port {Probe.port} for probe is already taken by pid {os.getpid()}"):
        check_port_free(stack_ctx, Probe())
    squatter.close()
    check_port_free(stack_ctx, Probe())  # free again: no error


def test_a_missing_tool_is_a_clear_error():
    from cryptopipe.stack.kafka import require_tool
    from cryptopipe.stack.progress import StepFailed

    with pytest.raises(StepFailed, match="`no-such-tool-xyz` not found on PATH — install it"):
        require_tool("no-such-tool-xyz", "install it")
