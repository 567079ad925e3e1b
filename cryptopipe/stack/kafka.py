"""Kafka 4.x, single-node KRaft (combined broker+controller), from Maven Central artifacts.

Every listener binds 127.0.0.1 and asks who is connecting (SASL), and StandardAuthorizer checks
what each identity may do (cryptopipe/stack/kafka_auth.py):

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

from cryptopipe.stack.component import Component, StackContext, port_open, program_block
from cryptopipe.stack.kafka_auth import BROKER, MECHANISM, SECURITY_PROTOCOL, password_key
from cryptopipe.stack.paths import (KAFKA_CONTROLLER_PORT, KAFKA_INTERNAL_PORT, KAFKA_PORT,  # noqa: F401 (re-exported)
                                    KAFKA_TOXI_PORT, KAFKA_TOXI_PROXY_PORT, RESOURCES)
from cryptopipe.stack.progress import StepFailed, wait_until

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


class Kafka(Component):
    name = "kafka"
    program = "kafka"
    port = KAFKA_PORT

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
        kdir = ctx.paths.kafka_dir
        data = kdir / "data"
        kdir.mkdir(parents=True, exist_ok=True)
        props = kdir / "server.properties"
        text = server_properties(ctx, data)
        if not props.exists() or props.read_text() != text:
            _restart_if_running(ctx)      # a running broker reads its config only when it starts
            fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            props.chmod(0o600)           # written by an older version with the default mode
        if (data / "meta.properties").exists():
            return
        cluster_id_file = kdir / "cluster.id"
        if not cluster_id_file.exists():
            cid = subprocess.run(["java", "-cp", self._classpath(ctx), "kafka.tools.StorageTool", "random-uuid"],
                                 capture_output=True, text=True)
            if cid.returncode != 0 or not cid.stdout.strip():
                raise StepFailed(f"kafka StorageTool random-uuid failed: {cid.stderr.strip()[-500:]}")
            cluster_id_file.write_text(cid.stdout.strip().splitlines()[-1])
        log = ctx.paths.logs / "kafka-format.log"
        with open(log, "wb") as out:
            rc = subprocess.call(["java", "-cp", self._classpath(ctx), "kafka.tools.StorageTool", "format",
                                  "-t", cluster_id_file.read_text().strip(), "-c", str(props), "-g"],
                                 stdout=out, stderr=subprocess.STDOUT)
        if rc != 0:
            raise StepFailed("formatting Kafka storage failed", log)

    def program_section(self, ctx: StackContext) -> str:
        cmd = (f"java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true "
               f"-Dlog4j2.configurationFile={RESOURCES / 'kafka-log4j2.properties'} "
               f"-cp {self._classpath(ctx)} kafka.Kafka {ctx.paths.kafka_dir / 'server.properties'}")
        return program_block(self.program, cmd, log=self.log_path(ctx), stopwaitsecs=30, startsecs=2)

    def healthy(self, ctx: StackContext) -> bool:
        # through the broker's own listener: the SCRAM users do not exist yet on a fresh stack
        if not port_open(KAFKA_PORT) or not port_open(KAFKA_INTERNAL_PORT):
            return False
        return bool(broker_admin(ctx).list_topics(timeout=3).brokers)

    def after_start(self, ctx: StackContext) -> None:
        from common.kafka import ensure_topics, make_admin
        from cryptopipe.stack.kafka_auth import SCRAM_USERS, reconcile

        passwords = {u: ctx.env[password_key(u)] for u in SCRAM_USERS}
        reconcile(broker_admin(ctx), passwords, ctx.paths.kafka_dir / "scram-applied.json")
        # a new credential takes effect once the broker applied its metadata record: wait for admin's
        admin = make_admin()
        wait_until(lambda: admin.list_topics(timeout=3).brokers, 30, "Kafka to accept the admin identity (SCRAM)",
                   self.log_path(ctx))
        ensure_topics(admin)

    def describe(self, ctx: StackContext) -> dict:
        from cryptopipe.stack.kafka_auth import summary

        out = {"address": f"127.0.0.1:{KAFKA_PORT}",
               "use": f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{KAFKA_PORT} with KAFKA_SASL_USERNAME/PASSWORD "
                      f"from {ctx.paths.env_file}"}
        if not port_open(KAFKA_INTERNAL_PORT):
            out["auth"] = f"{SECURITY_PROTOCOL} {MECHANISM}"
            return out
        try:
            counts = summary(broker_admin(ctx), timeout=5)
            out["auth"] = f"{SECURITY_PROTOCOL} {MECHANISM}: {counts['users']} users, {counts['acls']} ACLs"
            out["auth_detail"] = {"protocol": SECURITY_PROTOCOL, "mechanism": MECHANISM, **counts}
        except Exception as exc:  # noqa: BLE001 - status reports, it does not fail
            out["auth"] = f"{SECURITY_PROTOCOL} {MECHANISM}: users/ACLs unknown ({str(exc)[:80]})"
        return out


def _plain_jaas(password: str) -> str:
    """The broker's PLAIN login: its own credentials as a client (username/password) and the only
    user its PLAIN listeners accept (user_broker)."""
    return ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{BROKER}" password="{password}" user_{BROKER}="{password}";')


def server_properties(ctx: StackContext, data) -> str:
    broker_pw = ctx.env[password_key(BROKER)]
    scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{KAFKA_CONTROLLER_PORT}",
        f"listeners=CLIENT://127.0.0.1:{KAFKA_PORT},CONTROLLER://127.0.0.1:{KAFKA_CONTROLLER_PORT},"
        f"TOXI://127.0.0.1:{KAFKA_TOXI_PORT},INTERNAL://127.0.0.1:{KAFKA_INTERNAL_PORT}",
        f"advertised.listeners=CLIENT://127.0.0.1:{KAFKA_PORT},TOXI://127.0.0.1:{KAFKA_TOXI_PROXY_PORT},"
        f"INTERNAL://127.0.0.1:{KAFKA_INTERNAL_PORT}",
        "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT,TOXI:SASL_PLAINTEXT,"
        "INTERNAL:SASL_PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=INTERNAL",
        # who: SCRAM for clients, PLAIN for the broker's own identity
        f"sasl.enabled.mechanisms={MECHANISM}",
        f"listener.name.client.{MECHANISM.lower()}.sasl.jaas.config={scram_jaas}",
        f"listener.name.toxi.{MECHANISM.lower()}.sasl.jaas.config={scram_jaas}",
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
        f"log.dirs={data}",
        "num.partitions=3",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "log.retention.hours=168",
        "log.segment.bytes=268435456",
        "message.max.bytes=10485760",
        "num.network.threads=2",
        "num.io.threads=4",
        "",
    ])


def _restart_if_running(ctx: StackContext) -> None:
    """Stop a broker started with another config; the manager's start step starts it again."""
    from cryptopipe.stack import supervisor

    if supervisor.program_states(ctx).get(Kafka.program, {}).get("state") in ("RUNNING", "STARTING", "BACKOFF"):
        supervisor.stop_program(ctx, Kafka.program)


def broker_admin(ctx: StackContext):
    """An AdminClient on the internal listener as `broker` (a super user)."""
    from common.kafka import make_admin
    from cryptopipe.stack.kafka_auth import broker_settings

    return make_admin(settings=broker_settings(f"127.0.0.1:{KAFKA_INTERNAL_PORT}", ctx.env[password_key(BROKER)]))
