"""Kafka 4.x in KRaft mode (each node broker and controller in one process), from Maven Central
artifacts: one node (program `kafka`) by default, or a cluster of KAFKA_BROKERS=3 (programs
`kafka-1`..`kafka-3`, ports from cryptopipe.stack.paths.kafka_node_ports, each its own storage)
whose topics have three replicas and min.insync.replicas=2 (cryptopipe/stack/scale.py). With
KAFKA_HOSTS=netns each node runs in a network namespace of its own (cryptopipe/stack/netns.py).

Every listener binds 127.0.0.1 (with KAFKA_HOSTS=netns: its namespace's private address) and asks
who is connecting (SASL), and StandardAuthorizer checks what each identity may do
(cryptopipe/stack/kafka_auth.py); the ports below are the single broker's, a cluster node's are
kafka_node_ports(node) and it has no TOXI listener:

| listener   | port                  | mechanism     | who                                             |
| ---------- | --------------------- | ------------- | ----------------------------------------------- |
| CLIENT     | KAFKA_PORT            | SCRAM-SHA-512 | every client of the stack, each as its identity |
| TOXI       | KAFKA_TOXI_PORT       | SCRAM-SHA-512 | the same clients through Toxiproxy (fault tests)|
| INTERNAL   | KAFKA_INTERNAL_PORT   | PLAIN         | `broker` only: inter-broker traffic (transaction markers), the stack manager's user/ACL set-up |
| CONTROLLER | KAFKA_CONTROLLER_PORT | PLAIN         | `broker` only (KIP-919 lets clients talk to controllers: not without this password) |

SCRAM needs credentials stored in the cluster's metadata, which cannot exist before the cluster
does (and the controller listener cannot use SCRAM at all), so the broker's own identity is PLAIN
with its password in server.properties (0600, in the 0700 stack folder).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptopipe.stack import netns
from cryptopipe.stack.component import Component, StackContext, port_open, program_block
from cryptopipe.stack.kafka_auth import BROKER, MECHANISM, SECURITY_PROTOCOL, password_key
from cryptopipe.stack.paths import (KAFKA_CONTROLLER_PORT, KAFKA_INTERNAL_PORT, KAFKA_PORT,  # noqa: F401 (re-exported)
                                    KAFKA_TOXI_PORT, KAFKA_TOXI_PROXY_PORT, RESOURCES, kafka_node_ports)
from cryptopipe.stack.progress import StepFailed, wait_until
from cryptopipe.stack.scale import kafka_brokers, kafka_hosts, replication

KAFKA_VERSION = "4.4.0"
# The TOXI listener is for network-fault tests: the broker listens on KAFKA_TOXI_PORT and advertises
# KAFKA_TOXI_PROXY_PORT, where a Toxiproxy proxy forwards to it (cryptopipe/stack/toxiproxy.py), so
# clients bootstrapped through the proxy keep talking through it.


def require_tool(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise StepFailed(f"`{tool}` not found on PATH — {hint}")
    return path


def maven(ctx: StackContext, args: list[str], log_name: str, what: str) -> None:
    """Run Maven with the project's cache (outside the repo); a failure names `what` and the log."""
    require_tool("java", "install a Java 17 runtime (apt-get install openjdk-17-jre-headless)")
    mvn = require_tool("mvn", "install Maven (apt-get install maven)")
    log = ctx.paths.logs / log_name
    with open(log, "wb") as out:
        rc = subprocess.call([mvn, "-B", "-q", f"-Dmaven.repo.local={ctx.paths.m2}", *args],
                             stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        raise StepFailed(f"Maven could not fetch {what} (exit {rc}; is Maven Central reachable?)", log)


@dataclass(frozen=True)
class Node:
    """One KRaft node (broker and controller in one process) and where it keeps things."""
    id: int
    program: str
    host: str                 # the address its listeners bind and advertise
    client_port: int
    controller_port: int
    internal_port: int
    home: Path                # server.properties and data/
    toxi: bool = False        # the single broker also has the Toxiproxy listener (network-fault tests)
    namespace: str = ""       # KAFKA_HOSTS=netns: the network namespace it runs in

    @property
    def client(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def internal(self) -> str:
        return f"{self.host}:{self.internal_port}"


def cluster_home(ctx: StackContext) -> Path:
    """The cluster's own folder (cluster id, SCRAM bookkeeping): each shape of cluster is a
    cluster of its own, so switching KAFKA_BROKERS or KAFKA_HOSTS starts an empty one."""
    n = kafka_brokers(ctx)
    return ctx.paths.kafka_dir if n == 1 else ctx.paths.kafka_dir / f"cluster-{n}-{kafka_hosts(ctx)}"


def nodes(ctx: StackContext) -> list[Node]:
    n = kafka_brokers(ctx)
    if n == 1:
        return [Node(1, "kafka", "127.0.0.1", KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_INTERNAL_PORT,
                     ctx.paths.kafka_dir, toxi=True)]
    hosts = kafka_hosts(ctx)
    out = []
    for i in range(1, n + 1):
        client, controller, internal = kafka_node_ports(i)
        host, ns = (netns.address(i), netns.namespace(i)) if hosts == "netns" else ("127.0.0.1", "")
        out.append(Node(i, f"kafka-{i}", host, client, controller, internal, cluster_home(ctx) / f"node-{i}",
                        namespace=ns))
    return out


def bootstrap_servers(ctx: StackContext) -> str:
    """KAFKA_BOOTSTRAP_SERVERS: every broker's client listener (a client needs any one of them)."""
    return ",".join(node.client for node in nodes(ctx))


class Kafka(Component):
    name = "kafka"
    program = "kafka"
    port = KAFKA_PORT

    def programs(self, ctx: StackContext) -> tuple[str, ...]:
        return tuple(node.program for node in nodes(ctx))

    def log_path(self, ctx: StackContext):
        return ctx.paths.logs / f"{nodes(ctx)[0].program}.log"

    def install(self, ctx: StackContext) -> None:
        libs = ctx.paths.kafka_libs
        marker = libs / f".complete-{KAFKA_VERSION}"
        if marker.exists():
            return
        libs.mkdir(parents=True, exist_ok=True)
        maven(ctx, ["-f", str(RESOURCES / "kafka-pom.xml"), "dependency:copy-dependencies",
                    "-DincludeScope=runtime", f"-DoutputDirectory={libs}"],
              "install-kafka.log", f"the Kafka {KAFKA_VERSION} jars")
        marker.touch()

    def _classpath(self, ctx: StackContext) -> str:
        return f"{ctx.paths.kafka_libs}/*"

    def prepare(self, ctx: StackContext) -> None:
        all_nodes = nodes(ctx)
        if any(node.namespace for node in all_nodes):
            netns.ensure_hosts(len(all_nodes))
        home = cluster_home(ctx)
        home.mkdir(parents=True, exist_ok=True)
        cluster_id_file = home / "cluster.id"
        for node in all_nodes:
            node.home.mkdir(parents=True, exist_ok=True)
            props = node.home / "server.properties"
            text = server_properties(ctx, node, all_nodes)
            if not props.exists() or props.read_text() != text:
                _restart_if_running(ctx, node.program)   # a running broker reads its config only when it starts
                fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                props.chmod(0o600)           # written by an older version with the default mode
            if (node.home / "data" / "meta.properties").exists():
                continue
            if not cluster_id_file.exists():
                cid = subprocess.run(["java", "-cp", self._classpath(ctx), "kafka.tools.StorageTool", "random-uuid"],
                                     capture_output=True, text=True)
                if cid.returncode != 0 or not cid.stdout.strip():
                    raise StepFailed(f"kafka StorageTool random-uuid failed: {cid.stderr.strip()[-500:]}")
                cluster_id_file.write_text(cid.stdout.strip().splitlines()[-1])
            log = ctx.paths.logs / f"{node.program}-format.log"
            with open(log, "wb") as out:
                rc = subprocess.call(["java", "-cp", self._classpath(ctx), "kafka.tools.StorageTool", "format",
                                      "-t", cluster_id_file.read_text().strip(), "-c", str(props), "-g"],
                                     stdout=out, stderr=subprocess.STDOUT)
            if rc != 0:
                raise StepFailed(f"formatting Kafka storage of {node.program} failed", log)

    def program_section(self, ctx: StackContext) -> str:
        blocks = []
        for node in nodes(ctx):
            cmd = (f"java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true "
                   f"-Dlog4j2.configurationFile={RESOURCES / 'kafka-log4j2.properties'} "
                   f"-cp {self._classpath(ctx)} kafka.Kafka {node.home / 'server.properties'}")
            if node.namespace:
                cmd = f"ip netns exec {node.namespace} {cmd}"
            blocks.append(program_block(node.program, cmd, log=ctx.paths.logs / f"{node.program}.log",
                                        stopwaitsecs=30, startsecs=2))
        return "\n".join(blocks)

    def healthy(self, ctx: StackContext) -> bool:
        # through the brokers' own listeners: the SCRAM users do not exist yet on a fresh stack
        all_nodes = nodes(ctx)
        if not all(port_open(n.client_port, n.host) and port_open(n.internal_port, n.host) for n in all_nodes):
            return False
        return len(broker_admin(ctx).list_topics(timeout=3).brokers) == len(all_nodes)

    def after_start(self, ctx: StackContext) -> None:
        from common.kafka import ensure_topics, make_admin
        from cryptopipe.stack.kafka_auth import SCRAM_USERS, reconcile
        from cryptopipe.stack.scale import WORKER_KEYS, workers

        passwords = {u: ctx.env[password_key(u)] for u in SCRAM_USERS}
        reconcile(broker_admin(ctx), passwords, cluster_home(ctx) / "scram-applied.json")
        # a new credential takes effect once the broker applied its metadata record: wait for admin's
        admin = make_admin()
        wait_until(lambda: admin.list_topics(timeout=3).brokers, 30, "Kafka to accept the admin identity (SCRAM)",
                   self.log_path(ctx))
        rf, min_isr = replication(ctx)
        # a partition per group member at least: a member without one idles
        ensure_topics(admin, replication=rf, min_insync=min_isr,
                      min_partitions=max(workers(ctx, p) for p in WORKER_KEYS))

    def describe(self, ctx: StackContext) -> dict:
        from cryptopipe.stack.kafka_auth import summary

        all_nodes = nodes(ctx)
        rf, min_isr = replication(ctx)
        bootstrap = bootstrap_servers(ctx)
        out = {"address": bootstrap,
               "use": f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} with KAFKA_SASL_USERNAME/PASSWORD "
                      f"from {ctx.paths.env_file}",
               "replication": f"RF {rf}, min ISR {min_isr}"}
        if not any(port_open(n.internal_port, n.host) for n in all_nodes):
            out["auth"] = f"{SECURITY_PROTOCOL} {MECHANISM}"
            return out
        try:
            admin = broker_admin(ctx)
            counts = summary(admin, timeout=5)
            out["auth"] = f"{SECURITY_PROTOCOL} {MECHANISM}: {counts['users']} users, {counts['acls']} ACLs"
            out["auth_detail"] = {"protocol": SECURITY_PROTOCOL, "mechanism": MECHANISM, **counts}
            health = cluster_health(admin, {n.program: n.id for n in all_nodes})
            out["brokers"] = health["brokers"]
            out["under_replicated_partitions"] = health["under_replicated"]
            out["replication"] += (f"; brokers up {sum(health['brokers'].values())}/{len(all_nodes)}, "
                                   f"under-replicated partitions {health['under_replicated']}")
        except Exception as exc:  # noqa: BLE001 - status reports, it does not fail
            out["auth"] = f"{SECURITY_PROTOCOL} {MECHANISM}: users/ACLs unknown ({str(exc)[:80]})"
        return out


def cluster_health(admin, node_ids: dict[str, int], timeout: float = 5) -> dict:
    """{"brokers": {program: its node in the cluster's metadata}, "under_replicated": partitions
    whose in-sync replicas are fewer than their replicas} (every topic, internal ones included)."""
    md = admin.list_topics(timeout=timeout)
    under = sum(1 for t in md.topics.values() for p in t.partitions.values() if len(p.isrs) < len(p.replicas))
    return {"brokers": {name: i in md.brokers for name, i in node_ids.items()}, "under_replicated": under}


def _plain_jaas(password: str) -> str:
    """The broker's PLAIN login: its own credentials as a client (username/password) and the only
    user its PLAIN listeners accept (user_broker)."""
    return ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{BROKER}" password="{password}" user_{BROKER}="{password}";')


def server_properties(ctx: StackContext, node: Node, all_nodes: list[Node]) -> str:
    broker_pw = ctx.env[password_key(BROKER)]
    scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    rf, min_isr = replication(ctx)
    h = node.host
    listeners = [f"CLIENT://{h}:{node.client_port}", f"CONTROLLER://{h}:{node.controller_port}",
                 f"INTERNAL://{h}:{node.internal_port}"]
    advertised = [f"CLIENT://{h}:{node.client_port}", f"INTERNAL://{h}:{node.internal_port}"]
    protocols = ["CLIENT:SASL_PLAINTEXT", "CONTROLLER:SASL_PLAINTEXT", "INTERNAL:SASL_PLAINTEXT"]
    toxi = []
    if node.toxi:
        listeners.append(f"TOXI://127.0.0.1:{KAFKA_TOXI_PORT}")
        advertised.append(f"TOXI://127.0.0.1:{KAFKA_TOXI_PROXY_PORT}")
        protocols.append("TOXI:SASL_PLAINTEXT")
        toxi = [f"listener.name.toxi.{MECHANISM.lower()}.sasl.jaas.config={scram_jaas}"]
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node.id}",
        "controller.quorum.voters=" + ",".join(f"{n.id}@{n.host}:{n.controller_port}" for n in all_nodes),
        "listeners=" + ",".join(listeners),
        "advertised.listeners=" + ",".join(advertised),
        "listener.security.protocol.map=" + ",".join(protocols),
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=INTERNAL",
        # who: SCRAM for clients, PLAIN for the broker's own identity (brokers and controllers
        # talk to each other as `broker` on INTERNAL and CONTROLLER)
        f"sasl.enabled.mechanisms={MECHANISM}",
        f"listener.name.client.{MECHANISM.lower()}.sasl.jaas.config={scram_jaas}",
        *toxi,
        "listener.name.internal.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.internal.plain.sasl.jaas.config={_plain_jaas(broker_pw)}",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={_plain_jaas(broker_pw)}",
        "sasl.mechanism.inter.broker.protocol=PLAIN",
        "sasl.mechanism.controller.protocol=PLAIN",
        # what: ACLs (cryptopipe/stack/kafka_auth.py); no ACL means no access
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{BROKER};User:admin",
        "allow.everyone.if.no.acl.found=false",
        f"log.dirs={node.home / 'data'}",
        # a cluster of three keeps every partition on three brokers and acknowledges a write
        # (acks=all) once two have it: one broker may be lost without losing or refusing writes
        f"default.replication.factor={rf}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={rf}",
        "offsets.topic.num.partitions=1",
        f"transaction.state.log.replication.factor={rf}",
        f"transaction.state.log.min.isr={min_isr}",
        "transaction.state.log.num.partitions=1",
        f"share.coordinator.state.topic.replication.factor={rf}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        # a broker back from an outage takes its leaderships back (5 s checks instead of 300 s)
        "leader.imbalance.check.interval.seconds=5",
        "num.partitions=3",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "log.retention.hours=168",
        "log.segment.bytes=268435456",
        "message.max.bytes=10485760",
        "num.network.threads=2",
        "num.io.threads=4",
        "",
    ])


def _restart_if_running(ctx: StackContext, program: str) -> None:
    """Stop a broker started with another config; the manager's start step starts it again."""
    from cryptopipe.stack import supervisor

    if supervisor.program_states(ctx).get(program, {}).get("state") in ("RUNNING", "STARTING", "BACKOFF"):
        supervisor.stop_program(ctx, program)


def broker_admin(ctx: StackContext):
    """An AdminClient on the brokers' internal listeners as `broker` (a super user)."""
    from common.kafka import make_admin
    from cryptopipe.stack.kafka_auth import broker_settings

    return make_admin(settings=broker_settings(",".join(n.internal for n in nodes(ctx)),
                                               ctx.env[password_key(BROKER)]))
