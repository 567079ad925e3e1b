"""PostgreSQL 15 from /usr/lib/postgresql/15/bin, run as an unprivileged user when invoked as root.

Databases `cryptopipe` (the pipeline's tables, by versioned migrations) and `airflow` (metadata),
each owned by its own role with a generated password; listens on 127.0.0.1 only.
"""
from __future__ import annotations

import getpass
import hashlib
import os
import subprocess
from pathlib import Path

from cryptopipe.stack.component import Component, StackContext, port_open, program_block
from cryptopipe.stack.paths import POSTGRES_PORT
from cryptopipe.stack.progress import StepFailed

PG_BIN = Path(os.environ.get("CRYPTOPIPE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _is_root() -> bool:
    return os.geteuid() == 0


def pg_user() -> str:
    return "postgres" if _is_root() else getpass.getuser()


def as_pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if _is_root() else cmd


def _can_reach(path: Path) -> bool:
    """Can the postgres user create files in `path`'s parent chain?"""
    if not _is_root():
        return True
    probe = subprocess.run(as_pg(["test", "-x", str(path.parent)]), capture_output=True)
    return probe.returncode == 0


class Postgres(Component):
    name = "postgres"
    program = "postgres"
    port = POSTGRES_PORT

    def root(self, ctx: StackContext) -> Path:
        """Where the cluster lives: under the stack folder when the postgres user can reach it,
        else in /var/lib/cryptopipe/<hash of the stack folder>, linked from the stack folder."""
        link = ctx.paths.pg_link
        if link.is_symlink() or link.is_dir():
            return link.resolve()
        if _can_reach(link):
            return link
        digest = hashlib.sha256(str(ctx.paths.home).encode()).hexdigest()[:12]
        return Path("/var/lib/cryptopipe") / digest

    def forget_orphan(self, ctx: StackContext) -> None:
        """A cluster outside the stack folder whose stack folder was deleted (not `make clean`)
        belongs to secrets that are gone: start afresh rather than half-reuse it."""
        import shutil

        link = ctx.paths.pg_link
        if link.is_symlink() or link.exists():
            return
        root = self.root(ctx)
        if root != link and root.exists():
            from cryptopipe.stack.progress import console

            console.print(f"[yellow]! removing {root}: its stack folder {ctx.paths.home} was deleted[/yellow]")
            shutil.rmtree(root)

    def data_dir(self, ctx): return self.root(ctx) / "data"

    def socket_dir(self, ctx): return self.root(ctx) / "sock"

    def install(self, ctx: StackContext) -> None:
        for tool in ("initdb", "postgres"):
            if not (PG_BIN / tool).exists():
                raise StepFailed(f"{PG_BIN / tool} not found — install PostgreSQL 15 server binaries "
                                 "(apt-get install postgresql-15) or set CRYPTOPIPE_PG_BIN")

    def prepare(self, ctx: StackContext) -> None:
        self.forget_orphan(ctx)
        root = self.root(ctx)
        root.mkdir(parents=True, exist_ok=True)
        if root != ctx.paths.pg_link and not ctx.paths.pg_link.exists():
            ctx.paths.pg_link.symlink_to(root)
        sock = self.socket_dir(ctx)
        sock.mkdir(exist_ok=True)
        if _is_root():
            subprocess.run(["chown", "postgres:postgres", str(root), str(sock)], check=True)
            os.chmod(root, 0o700)
        data = self.data_dir(ctx)
        if not (data / "PG_VERSION").exists():
            log = ctx.paths.logs / "postgres-initdb.log"
            with open(log, "wb") as out:
                rc = subprocess.call(as_pg([str(PG_BIN / "initdb"), "-D", str(data), "-U", pg_user(),
                                            "--auth-local=peer", "--auth-host=scram-sha-256",
                                            "--encoding=UTF8", "--locale=C.UTF-8"]),
                                     stdout=out, stderr=subprocess.STDOUT)
            if rc != 0:
                raise StepFailed("initdb failed", log)
        conf = "\n".join([
            "# written by cryptopipe stack",
            "listen_addresses = '127.0.0.1'",
            f"port = {POSTGRES_PORT}",
            f"unix_socket_directories = '{sock}'",
            "max_connections = 200",
            "shared_buffers = 512MB",
            "work_mem = 16MB",
            "maintenance_work_mem = 128MB",
            "wal_compression = on",
            "max_wal_size = 2GB",
            "checkpoint_timeout = 10min",
            "password_encryption = scram-sha-256",
            "logging_collector = off",
            "log_min_messages = warning",
            "",
        ])
        extra = data / "cryptopipe.conf"
        self._write_as_pg(extra, conf)
        main_conf = data / "postgresql.conf"
        text = subprocess.run(as_pg(["cat", str(main_conf)]), capture_output=True, text=True).stdout
        if "include_if_exists = 'cryptopipe.conf'" not in text:
            self._write_as_pg(main_conf, text + "\ninclude_if_exists = 'cryptopipe.conf'\n")

    def _write_as_pg(self, path: Path, content: str) -> None:
        proc = subprocess.run(as_pg(["tee", str(path)]), input=content, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StepFailed(f"could not write {path}: {proc.stderr.strip()}")

    def program_section(self, ctx: StackContext) -> str:
        return program_block(self.program, f"{PG_BIN / 'postgres'} -D {self.data_dir(ctx)}",
                             log=self.log_path(ctx), user=pg_user() if _is_root() else None,
                             stopsignal="INT", stopwaitsecs=60, startsecs=2)

    def psql(self, ctx: StackContext, sql: str, db: str = "postgres", params: list[str] | None = None) -> str:
        cmd = as_pg(["psql", "-h", str(self.socket_dir(ctx)), "-p", str(POSTGRES_PORT), "-d", db,
                     "-v", "ON_ERROR_STOP=1", "-qAt", "-X"])
        for p in params or []:
            cmd += ["-v", p]
        proc = subprocess.run(cmd, input=sql, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StepFailed(f"psql failed: {proc.stderr.strip()[-500:]}")
        return proc.stdout

    def healthy(self, ctx: StackContext) -> bool:
        if not port_open(POSTGRES_PORT):
            return False
        proc = subprocess.run(as_pg([str(PG_BIN / "pg_isready"), "-q", "-h", str(self.socket_dir(ctx)),
                                     "-p", str(POSTGRES_PORT)]), capture_output=True)
        return proc.returncode == 0

    def after_start(self, ctx: StackContext) -> None:
        roles = {"cryptopipe": ctx.env["CRYPTOPIPE_PG_PASSWORD"], "airflow": ctx.env["CRYPTOPIPE_AIRFLOW_DB_PASSWORD"]}
        for role, password in roles.items():
            # psql variables (:'pw') quote the password as a literal: no string formatting into SQL
            self.psql(ctx, f"""
                SELECT format('CREATE ROLE {role} LOGIN PASSWORD %L', :'pw')
                 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') \\gexec
                SELECT format('ALTER ROLE {role} PASSWORD %L', :'pw') \\gexec
                SELECT 'CREATE DATABASE {role} OWNER {role}'
                 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{role}') \\gexec
            """, params=[f"pw={password}"])
        from common.db import migrate

        migrate(dsn_for(ctx, "cryptopipe"))

    def describe(self, ctx: StackContext) -> dict:
        return {"address": f"127.0.0.1:{POSTGRES_PORT}",
                "use": f"psql \"$POSTGRES_DSN\"  (POSTGRES_DSN is in {ctx.paths.env_file})",
                "databases": ["cryptopipe", "airflow"]}


def dsn_for(ctx: StackContext, role: str) -> str:
    password = ctx.env["CRYPTOPIPE_PG_PASSWORD" if role == "cryptopipe" else "CRYPTOPIPE_AIRFLOW_DB_PASSWORD"]
    return f"postgresql://{role}:{password}@127.0.0.1:{POSTGRES_PORT}/{role}"
