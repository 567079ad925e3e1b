"""What every stack component provides to the manager."""
from __future__ import annotations

import socket
from dataclasses import dataclass, field

from cryptopipe.stack.paths import Paths


@dataclass
class StackContext:
    paths: Paths
    env: dict[str, str]              # the stack.env values (secrets and endpoints)
    source: str = "live"             # live | sim
    python: str = ""
    extra: dict = field(default_factory=dict)


class Component:
    name: str = ""
    program: str = ""                # supervisord program name (the first, if it runs several)
    port: int | None = None
    start_timeout: float = 90        # seconds from start to healthy before `up` fails
    always_listed: bool = False      # `status` lists it even when supervisord does not declare it

    def programs(self, ctx: StackContext) -> tuple[str, ...]:
        """Every supervisord program this component runs (started together, judged together)."""
        return (self.program,)

    def install(self, ctx: StackContext) -> None:
        """Download or locate what the component needs (idempotent, cached)."""

    def prepare(self, ctx: StackContext) -> None:
        """Write config files and one-time state (idempotent) before the program starts."""

    def program_section(self, ctx: StackContext) -> str:
        raise NotImplementedError

    def healthy(self, ctx: StackContext) -> bool:
        raise NotImplementedError

    def after_start(self, ctx: StackContext) -> None:
        """Create what lives inside the running component (topics, bucket, databases)."""

    def describe(self, ctx: StackContext) -> dict:
        return {}

    def log_path(self, ctx: StackContext):
        return ctx.paths.logs / f"{self.program}.log"


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def program_block(name: str, command: str, *, log, user: str | None = None, directory: str | None = None,
                  environment: dict[str, str] | None = None, stopsignal: str = "TERM", stopwaitsecs: int = 30,
                  startsecs: int = 1) -> str:
    lines = [f"[program:{name}]", f"command={command}", "autostart=false", "autorestart=true",
             f"startsecs={startsecs}", "startretries=3", f"stopsignal={stopsignal}", f"stopwaitsecs={stopwaitsecs}",
             "stopasgroup=true", "killasgroup=true", "redirect_stderr=true", f"stdout_logfile={log}",
             "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=2"]
    if user:
        lines.append(f"user={user}")
    if directory:
        lines.append(f"directory={directory}")
    if environment:
        # supervisord's syntax: KEY="value",KEY2="value2"; '%' must be doubled
        env = ",".join(f'{k}="{str(v).replace("%", "%%")}"' for k, v in environment.items())
        lines.append(f"environment={env}")
    return "\n".join(lines) + "\n"
