"""S3: S3Proxy 4.1.0 (one jar from Maven Central) over a local filesystem directory.

Chosen over MinIO by measured cold-start cost on this machine kind: the S3Proxy jar arrives in
~4 s from an empty Maven cache and starts in ~0.8 s; MinIO needs a ~134 s `go install` and ~2 GB
of Go caches, and its repository says it is no longer maintained (STACK-FACTS.md).
"""
from __future__ import annotations

from cryptopipe.stack.component import Component, StackContext, port_open, program_block
from cryptopipe.stack.kafka import maven
from cryptopipe.stack.paths import S3_PORT
from cryptopipe.stack.progress import StepFailed

S3PROXY_ARTIFACT = "org.gaul:s3proxy:4.1.0:jar:jar-with-dependencies"


class S3Proxy(Component):
    name = "s3"
    program = "s3proxy"
    port = S3_PORT

    def install(self, ctx: StackContext) -> None:
        jar = ctx.paths.s3proxy_jar
        if jar.exists():
            return
        jar.parent.mkdir(parents=True, exist_ok=True)
        maven(ctx, ["dependency:copy", f"-Dartifact={S3PROXY_ARTIFACT}", f"-DoutputDirectory={jar.parent}"],
              "install-s3proxy.log", S3PROXY_ARTIFACT)
        if not jar.exists():
            raise StepFailed(f"Maven reported success but {jar} is missing", ctx.paths.logs / "install-s3proxy.log")

    def prepare(self, ctx: StackContext) -> None:
        data = ctx.paths.s3_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = ctx.paths.s3_dir / "s3proxy.properties"
        key, secret = ctx.env["AWS_ACCESS_KEY_ID"], ctx.env["AWS_SECRET_ACCESS_KEY"]
        content = "\n".join([
            f"s3proxy.endpoint=http://127.0.0.1:{S3_PORT}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={key}",
            f"s3proxy.credential={secret}",
            "jclouds.provider=filesystem",
            f"jclouds.filesystem.basedir={data}",
            f"jclouds.identity={key}",
            f"jclouds.credential={secret}",
            "",
        ])
        props.touch(mode=0o600)
        props.chmod(0o600)
        props.write_text(content)

    def program_section(self, ctx: StackContext) -> str:
        cmd = (f"java -Xmx384m -Djava.awt.headless=true -jar {ctx.paths.s3proxy_jar} "
               f"--properties {ctx.paths.s3_dir / 's3proxy.properties'}")
        return program_block(self.program, cmd, log=self.log_path(ctx), stopwaitsecs=15)

    def healthy(self, ctx: StackContext) -> bool:
        if not port_open(S3_PORT):
            return False
        from common.s3 import make_s3_client

        make_s3_client().list_buckets()
        return True

    def after_start(self, ctx: StackContext) -> None:
        from common.s3 import make_s3_client
        from common.settings import get_settings

        client = make_s3_client()
        bucket = get_settings().s3_bucket
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in names:
            client.create_bucket(Bucket=bucket)

    def describe(self, ctx: StackContext) -> dict:
        from common.settings import get_settings

        return {"address": f"http://127.0.0.1:{S3_PORT}", "bucket": get_settings().s3_bucket,
                "use": "aws --endpoint-url $S3_ENDPOINT_URL s3 ls s3://$S3_BUCKET/raw/ --recursive "
                       f"(credentials in {ctx.paths.env_file})"}
