"""A Kafka cluster and consumers run several times (cryptopipe/stack/scale.py, kafka.py,
supervisor.py): names, ports, replication and supervisord's numprocs. The real cluster is held
to this in tests/faults/test_cluster_faults.py."""
import pytest

from cryptopipe.stack import netns, scale, supervisor
from cryptopipe.stack.component import StackContext
from cryptopipe.stack.kafka import bootstrap_servers, nodes, server_properties
from cryptopipe.stack.paths import KAFKA_PORT, PORT_OFFSET, Paths
from cryptopipe.stack.progress import StepFailed
from cryptopipe.stack.secrets import ensure_generated


@pytest.fixture(autouse=True)
def no_scale_in_environment(monkeypatch):
    for key in scale.SCALE_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("CRYPTOPIPE_PROCESS_NUM", raising=False)


def ctx(tmp_path, **scale_env) -> StackContext:
    return StackContext(paths=Paths(home=tmp_path / ".stack", cache=tmp_path / "cache"),
                        env={**ensure_generated({}), **scale_env})


def props_of(text: str) -> dict:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_the_default_is_one_broker_named_kafka_with_one_replica(tmp_path):
    c = ctx(tmp_path)
    assert [n.program for n in nodes(c)] == ["kafka"]
    assert bootstrap_servers(c) == f"127.0.0.1:{KAFKA_PORT}"
    assert scale.replication(c) == (1, 1)
    props = props_of(server_properties(c, nodes(c)[0], nodes(c)))
    assert props["node.id"] == "1" and props["min.insync.replicas"] == "1"
    assert props["log.dirs"] == str(c.paths.kafka_dir / "data")       # where a one-broker stack always kept it


def test_three_brokers_are_three_voters_with_their_own_ports_and_storage(tmp_path):
    c = ctx(tmp_path, KAFKA_BROKERS="3")
    ns = nodes(c)
    assert [n.program for n in ns] == ["kafka-1", "kafka-2", "kafka-3"]
    ports = [p for n in ns for p in (n.client_port, n.controller_port, n.internal_port)]
    assert len(set(ports)) == 9 and KAFKA_PORT not in ports
    assert len({n.home for n in ns}) == 3
    assert bootstrap_servers(c).split(",") == [f"127.0.0.1:{n.client_port}" for n in ns]
    assert scale.replication(c) == (3, 2)
    for n in ns:
        props = props_of(server_properties(c, n, ns))
        assert props["node.id"] == str(n.id)
        assert props["controller.quorum.voters"] == ",".join(f"{m.id}@127.0.0.1:{m.controller_port}" for m in ns)
        assert props["log.dirs"] == str(n.home / "data")
        listeners = dict(item.split("://") for item in props["listeners"].split(","))
        assert set(listeners) == {"CLIENT", "CONTROLLER", "INTERNAL"}      # no Toxiproxy listener
        assert props["inter.broker.listener.name"] == "INTERNAL"
        for key in ("default.replication.factor", "offsets.topic.replication.factor",
                    "transaction.state.log.replication.factor"):
            assert props[key] == "3", key
        assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
        assert props["allow.everyone.if.no.acl.found"] == "false"
    section = "".join(nodes_section(c))
    assert all(f"[program:kafka-{i}]" in section for i in (1, 2, 3))


def nodes_section(c):
    from cryptopipe.stack.kafka import Kafka

    return Kafka().program_section(c)


def test_hosts_mode_binds_each_broker_to_its_namespace_address(tmp_path):
    c = ctx(tmp_path, KAFKA_BROKERS="3", KAFKA_HOSTS="netns")
    ns = nodes(c)
    assert [n.host for n in ns] == [netns.address(i) for i in (1, 2, 3)]
    assert len({n.namespace for n in ns}) == 3
    for n in ns:
        listeners = props_of(server_properties(c, n, ns))["listeners"]
        assert "127.0.0.1" not in listeners and n.host in listeners
    section = nodes_section(c)
    assert f"command=ip netns exec {ns[1].namespace} java" in section
    assert all(len(name) <= 15 for name in (netns.BRIDGE, netns.host_link(3), netns.namespace(3)))


@pytest.mark.parametrize("env, message", [
    ({"KAFKA_BROKERS": "2"}, "quorum"), ({"KAFKA_BROKERS": "three"}, "whole number"),
    ({"KAFKA_BROKERS": "9"}, "from 1 to 5"), ({"LOAD_WORKERS": "0"}, "LOAD_WORKERS must be from 1"),
    ({"KAFKA_HOSTS": "vm"}, "KAFKA_HOSTS must be one of"),
])
def test_bad_scale_settings_are_refused_clearly(env, message):
    with pytest.raises(StepFailed, match=message):
        scale.settings_from(env)


def test_scale_settings_fall_back_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORM_WORKERS", "2")
    assert scale.workers(ctx(tmp_path), "transform") == 2
    assert scale.workers(ctx(tmp_path, TRANSFORM_WORKERS="3"), "transform") == 3   # the stack's env first
    assert scale.settings_from({"KAFKA_BROKERS": "3", "LOAD_WORKERS": None}) == {"KAFKA_BROKERS": "3"}


def test_workers_become_numprocs_with_numbered_process_names(tmp_path):
    c = ctx(tmp_path, LOAD_WORKERS="2", TRANSFORM_WORKERS="3")
    text = supervisor.pipeline_sections(c)
    load = text.split("[program:load]", 1)[1].split("[program:", 1)[0]
    assert "numprocs=2\n" in load and "process_name=%(program_name)s_%(process_num)02d" in load
    assert "numprocs=3\n" in text.split("[program:transform]", 1)[1].split("[program:", 1)[0]
    archive = text.split("[program:archive]", 1)[1].split("[program:", 1)[0]
    assert "numprocs=" not in archive
    # each process its own transactional.id instance, metrics port and log
    transform = text.split("[program:transform]", 1)[1].split("[program:", 1)[0]
    assert "--instance %(process_num)d" in transform
    for section in (transform, load, archive):
        assert 'CRYPTOPIPE_PROCESS_NUM="%(process_num)d"' in section
    assert "logs/load_%(process_num)02d.log" in load and "logs/archive.log" in archive
    assert supervisor.pipeline_processes(c) == [
        "extract-binance", "extract-kucoin", "transform_00", "transform_01", "transform_02", "load_00", "load_01",
        "archive", "api"]
    assert supervisor.processes(c, "load") == ["load_00", "load_01"]
    assert supervisor.processes(c, "load_01") == ["load_01"]
    assert supervisor.full_name(c, "load_01") == "pipeline:load_01"
    assert supervisor.full_name(c, "kafka-2") == "kafka-2"


def test_one_worker_keeps_the_programs_own_name(tmp_path):
    c = ctx(tmp_path)
    assert "\nnumprocs=" not in supervisor.pipeline_sections(c)
    assert supervisor.processes(c, "transform") == ["transform"]
    assert supervisor.full_name(c, "transform") == "pipeline:transform"
    assert scale.program_of_process("load_01") == "load"
    assert scale.program_of_process("kafka-1") == "kafka-1" and scale.program_of_process("extract_01") == "extract_01"


def test_each_process_of_a_daemon_serves_metrics_on_its_own_port(monkeypatch):
    from common.settings import metrics_port

    assert metrics_port(9104) == 9104 + PORT_OFFSET
    monkeypatch.setenv("CRYPTOPIPE_PROCESS_NUM", "1")
    assert metrics_port(9104) == 9204 + PORT_OFFSET
    ports = {metrics_port(base) for base in (9103, 9104, 9105)} | {9103 + PORT_OFFSET, 9104 + PORT_OFFSET}
    assert len(ports) == 5
    monkeypatch.setenv("CRYPTOPIPE_PROCESS_NUM", "x")
    with pytest.raises(SystemExit, match="CRYPTOPIPE_PROCESS_NUM"):
        metrics_port(9104)


def test_the_stream_supervisor_judges_each_process_by_its_programs_watch():
    from plugins.supervision import default_watches, watched_program

    watches = default_watches()
    assert watched_program("load", watches) == "load"
    assert watched_program("load_01", watches) == "load"
    assert watched_program("transform_00", watches) == "transform"
    assert watched_program("kafka-1", watches) is None and watched_program("postgres", watches) is None
