"""Kafka 4.x, single-node KRaft (combined broker+controller), from Maven Central artifacts."""
from __future__ import annotations

import shutil
import subprocess

from cryptopipe.stack.component import Component, StackContext, port_open, program_block
from cryptopipe.stack.paths import (KAFKA_CONTROLLER_PORT, KAFKA_PORT, KAFKA_TOXI_PORT,  # noqa: F401 (re-exported)
                                    KAFKA_TOXI_PROXY_PORT, RESOURCES)
from cryptopipe.stack.progress import StepFailed

KAFKA_VERSION = "4.4.0"
# A third listener for network-fault tests: the broker listens on KAFKA_TOXI_PORT and advertises
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
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{KAFKA_CONTROLLER_PORT}",
            f"listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT},CONTROLLER://127.0.0.1:{KAFKA_CONTROLLER_PORT},"
            f"TOXI://127.0.0.1:{KAFKA_TOXI_PORT}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT},TOXI://127.0.0.1:{KAFKA_TOXI_PROXY_PORT}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,TOXI:PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
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
        ]))
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
        if not port_open(KAFKA_PORT):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{KAFKA_PORT}"})
        md = admin.list_topics(timeout=3)
        return bool(md.brokers)

    def after_start(self, ctx: StackContext) -> None:
        from common.kafka import ensure_topics

        ensure_topics()

    def describe(self, ctx: StackContext) -> dict:
        return {"address": f"127.0.0.1:{KAFKA_PORT}",
                "use": f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{KAFKA_PORT}"}
