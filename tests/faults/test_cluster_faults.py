"""The pipeline on a three-broker Kafka cluster (KAFKA_BROKERS=3: RF 3, min.insync.replicas=2),
each broker a "host" of its own (KAFKA_HOSTS=netns: a Linux network namespace joined to the
machine by a bridge), with two processes of each consumer (TRANSFORM/LOAD/ARCHIVE_WORKERS=2).

Three faults, each held to the same invariants and accounting as every fault scenario
(tests/plugins/pipeline.py `scenario`: every tick the simulator sent stored once or in a recorded
gap, every raw record in S3 once, lag back to 0, no process left dead), and for the brokers
also: under-replicated partitions back to 0.

- a broker killed with SIGKILL while streaming, kept down 60 s, started again;
- a broker's namespace cut off the network (its link down) for 30 s: the controller quorum (the
  other two) holds, the partitions it led get new leaders, it catches up once back;
- one of two loaders and one of two transformers killed with SIGKILL mid-stream: the group
  rebalances; loader offsets live in Postgres with the rows, the transformer's in its
  transactions, so nothing is lost or doubled.

These run last in the suite (tests/conftest.py): they turn the session's stack into the
cluster, and give the stack back one broker when done.
"""
import os
import signal
import time

import pytest

from tests.plugins.pipeline import E2E_ENV, E2E_SIM_ARGS, Figures, PipelineHandle, scenario, wait_for

pytestmark = pytest.mark.faults

CLUSTER_ENV = {"KAFKA_BROKERS": "3", "KAFKA_HOSTS": "netns", "TRANSFORM_WORKERS": "2", "LOAD_WORKERS": "2",
               "ARCHIVE_WORKERS": "2"}
BROKER_DOWN_S = 60
CUT_OFF_S = 30


def empty_raw_archive(s3, bucket: str) -> int:
    """A new cluster numbers its offsets from 0 again, and the archive names objects by offset:
    the earlier cluster's objects would read as this one's doubles."""
    removed = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="raw/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            removed += len(keys)
    return removed


@pytest.fixture(scope="module")
def cluster(stack, s3):
    from common.db import connect
    from common.settings import get_settings
    from cryptopipe.stack import manager, netns, supervisor
    from cryptopipe.stack.sim import sim_endpoints
    from sim.control import SimControl
    from tests.plugins.stack import truncate_pipeline_tables

    ctx = manager.make_context("sim")
    if supervisor.running(ctx):
        for program in supervisor.PIPELINE_PROGRAMS:
            supervisor.stop_program(ctx, program)
    conn = connect()
    conn.autocommit = True
    truncate_pipeline_tables(conn)       # the loader's offsets too: they belong to the old cluster
    conn.close()
    empty_raw_archive(s3, stack.s3_bucket)
    manager.up("sim", with_airflow=False, sim_args=E2E_SIM_ARGS, env={**E2E_ENV, **CLUSTER_ENV})
    get_settings.cache_clear()
    handle = PipelineHandle(manager.make_context(), SimControl(sim_endpoints()["SIM_CONTROL_URL"]))
    wait_for(lambda: not handle.all_running() or None, 90, "every program RUNNING")
    yield handle
    ctx = manager.make_context()
    for program in (*supervisor.PIPELINE_PROGRAMS, "sim", "kafka-1", "kafka-2", "kafka-3"):
        try:
            supervisor.stop_program(ctx, program)
        except Exception:
            pass
    netns.remove_hosts(3)
    for key in (*E2E_ENV, *CLUSTER_ENV):   # one broker and one of each again at the stack's next `up`
        ctx.env.pop(key, None)
    manager.write_stack_env(ctx)


def health(h) -> dict:
    from common.kafka import make_admin
    from cryptopipe.stack.kafka import cluster_health, nodes

    return cluster_health(make_admin(), {n.program: n.id for n in nodes(h.ctx)})


def leader_of(topic: str, partition: int = 0) -> int:
    from common.kafka import make_admin

    return make_admin().list_topics(topic, timeout=10).topics[topic].partitions[partition].leader


def wait_fully_replicated(h, fig: Figures, since: float) -> None:
    """Every broker back in the cluster and no partition under-replicated (the invariant the
    cluster adds); records how long after `since` that took."""
    def whole():
        got = health(h)
        return (all(got["brokers"].values()) and got["under_replicated"] == 0) or None
    wait_for(whole, 180, "every broker back and no under-replicated partition", interval=1)
    fig.add(fully_replicated_after_s=round(time.monotonic() - since, 1))


def test_cluster_is_three_brokers_rf3_min_isr2(cluster):
    from common.kafka import make_admin
    from common.topics import ALL_TOPICS
    from confluent_kafka.admin import ConfigResource

    h = cluster
    assert health(h) == {"brokers": {"kafka-1": True, "kafka-2": True, "kafka-3": True}, "under_replicated": 0}
    admin = make_admin()
    md = admin.list_topics(timeout=10)
    for topic in ALL_TOPICS:
        assert all(len(p.replicas) == 3 for p in md.topics[topic].partitions.values()), topic
    configs = admin.describe_configs([ConfigResource("topic", t) for t in ALL_TOPICS])
    for resource, future in configs.items():
        assert future.result(timeout=30)["min.insync.replicas"].value == "2", resource
    # two members of each consumer group, each with partitions of its own
    from cryptopipe.stack import supervisor

    assert supervisor.pipeline_processes(h.ctx).count("load_01") == 1
    assert all(h.info(p)["statename"] == "RUNNING" for p in ("transform_00", "transform_01", "load_00", "load_01",
                                                             "archive_00", "archive_01"))


def test_broker_killed_and_back_after_60s(cluster, pg, s3, stack):
    h = cluster
    with scenario(h, pg, s3, stack.s3_bucket, "cluster_broker_kill9_60s", candles=False) as fig:
        time.sleep(3)
        node = leader_of("binance_raw_data")         # the leader of live partitions, not a bystander
        program = f"kafka-{node}"
        pid = h.info(program)["pid"]
        os.kill(pid, signal.SIGKILL)
        # supervisord would restart it at once: keep it down (the restarted one, if any, is stopped)
        wait_for(lambda: h.info(program)["pid"] != pid or None, 15, f"supervisord to see {program} die")
        h.stop(program)
        down_since = time.monotonic()
        under = []
        while time.monotonic() - down_since < BROKER_DOWN_S:
            under.append(health(h)["under_replicated"])
            time.sleep(5)
        back = time.monotonic()
        h.start(program)
        fig.add(broker=program, broker_down_s=BROKER_DOWN_S, under_replicated_max=max(under))
        assert max(under) > 0, "no partition lost a replica: the killed broker held none"
        wait_fully_replicated(h, fig, back)
        time.sleep(10)


def test_broker_cut_off_the_network_for_30s(cluster, pg, s3, stack):
    from cryptopipe.stack import netns

    h = cluster
    with scenario(h, pg, s3, stack.s3_bucket, "cluster_broker_cut_off_30s", candles=False) as fig:
        time.sleep(3)
        node = leader_of("kucoin_raw_data")
        netns.set_link(node, False)
        cut = time.monotonic()
        try:
            under = []
            while time.monotonic() - cut < CUT_OFF_S:
                time.sleep(5)
                got = health(h)
                under.append(got["under_replicated"])
        finally:
            netns.set_link(node, True)
        back = time.monotonic()
        fig.add(broker=f"kafka-{node}", cut_off_s=CUT_OFF_S, under_replicated_max=max(under))
        # the quorum held: the other two kept the cluster answering and took the node's leaderships
        assert max(under) > 0, "no partition lost an in-sync replica while its broker was cut off"
        wait_fully_replicated(h, fig, back)
        assert h.info(f"kafka-{node}")["statename"] == "RUNNING"
        time.sleep(10)


def test_one_of_two_loaders_and_transformers_killed(cluster, pg, s3, stack):
    h = cluster
    with scenario(h, pg, s3, stack.s3_bucket, "cluster_kill9_one_of_two_loaders_transformers") as fig:
        killed = []
        for program in ("load_01", "transform_00"):
            time.sleep(4)
            killed.append(h.kill9(program))
        time.sleep(15)
        fig.add(killed=len(killed), transform_workers=2, load_workers=2)
    assert health(h)["under_replicated"] == 0
