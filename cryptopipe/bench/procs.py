"""Processes the benchmark starts itself: the simulator and the pipeline daemons, each with its own
log file, and per-process CPU / RSS sampling with psutil."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from sim.startup import read_start_env

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Proc:
    """One child process: its command, log file and resource samples."""
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None
    ps: psutil.Process | None = None
    cpu_start: float | None = None
    wall_start: float | None = None
    cpu_end: float | None = None
    wall_end: float | None = None
    peak_rss: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)
    _cpu_before: float = 0.0     # CPU seconds of earlier incarnations (after restarts)
    _cpu_last: float = 0.0       # last CPU reading of the current incarnation

    def start(self) -> "Proc":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=child_env(self.env), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.ps = psutil.Process(self.popen.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def cpu_seconds(self) -> float | None:
        try:
            t = self.ps.cpu_times()
            self._cpu_last = t.user + t.system
        except (psutil.Error, AttributeError):
            if self.popen is None:
                return None
        return self._cpu_before + self._cpu_last

    def restart(self) -> None:
        """Start the same command again after it exited (what supervisord does in production);
        the exit is recorded with the tail of its log."""
        self.restarts.append({"at": time.time(), "returncode": self.popen.returncode if self.popen else None,
                              "log_tail": self.log_tail(1500)})
        self._cpu_before += self._cpu_last
        self._cpu_last = 0.0
        self.start()

    def sample(self, now: float) -> None:
        self.cpu_seconds()  # keeps the last reading, so CPU survives a restart
        try:
            rss = self.ps.memory_info().rss
        except (psutil.Error, AttributeError):
            return
        self.peak_rss = max(self.peak_rss, rss)
        self.rss_samples.append((now, rss))

    def mark_start(self) -> None:
        self.cpu_start, self.wall_start = self.cpu_seconds(), time.monotonic()

    def mark_end(self) -> None:
        self.cpu_end, self.wall_end = self.cpu_seconds(), time.monotonic()

    def cpu_percent(self) -> float | None:
        """CPU over the measured window, in % of one core."""
        if None in (self.cpu_start, self.cpu_end, self.wall_start, self.wall_end):
            return None
        wall = self.wall_end - self.wall_start
        return 100.0 * (self.cpu_end - self.cpu_start) / wall if wall > 0 else None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the daemons finish their batch and exit), then SIGKILL after `timeout`."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class SimProc(Proc):
    """`python -m sim --port 0 ...`: waits for the NAME=value lines it prints once bound."""

    def start(self, timeout: float = 60.0) -> "SimProc":  # type: ignore[override]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=child_env(self.env), stdout=subprocess.PIPE,
                                      stderr=log, text=True, start_new_session=True)
        log.close()
        self.ps = psutil.Process(self.popen.pid)
        self.urls = read_start_env(self.popen, timeout, self.log_tail)
        # nothing else comes on stdout; drain it anyway so the pipe can never fill
        threading.Thread(target=self.popen.stdout.read, daemon=True).start()
        return self


def find_infra() -> dict[str, list[psutil.Process]]:
    """This stack's shared services (the machine may run other stacks: their Kafka, Postgres and
    S3Proxy are not ours to count): Kafka and S3Proxy by the properties file of this stack's
    folder on their command line, Postgres as the postmaster of this stack's cluster (its pid
    file) and its children."""
    from cryptopipe.stack.manager import make_context
    from cryptopipe.stack.postgres import Postgres

    ctx = make_context()
    kafka_props = str(ctx.paths.kafka_dir / "server.properties")
    s3_props = str(ctx.paths.s3_dir / "s3proxy.properties")
    out: dict[str, list[psutil.Process]] = {"kafka": [], "postgres": [], "s3proxy": []}
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or ()
            if "kafka.Kafka" in cmd and kafka_props in cmd:
                out["kafka"].append(p)
            elif s3_props in cmd:
                out["s3proxy"].append(p)
        except psutil.Error:
            continue
    try:
        pid_file = Postgres().data_dir(ctx) / "postmaster.pid"
        postmaster = psutil.Process(int(pid_file.read_text().split("\n", 1)[0]))
        out["postgres"] = [postmaster, *postmaster.children()]
    except (OSError, ValueError, psutil.Error):
        pass
    return out


class InfraSampler:
    """CPU seconds and RSS of this stack's shared services, summed over their processes. Postgres
    forks a backend per connection: the process list is read again at each mark, a process is
    counted over the part of the window it lived, and the postmaster's reaped children count
    through its children_* times."""

    def __init__(self) -> None:
        self.groups = find_infra()
        self.cpu: dict[str, float] = {k: 0.0 for k in self.groups}
        self._start: dict[int, float] = {}
        self.peak_rss: dict[str, int] = {k: 0 for k in self.groups}
        self.wall = [0.0, 0.0]

    @staticmethod
    def _cpu_of(p: psutil.Process) -> float | None:
        try:
            t = p.cpu_times()
            return t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
        except psutil.Error:
            return None

    def mark_start(self) -> None:
        self.groups = find_infra()
        self._start = {}
        for procs in self.groups.values():
            for p in procs:
                c = self._cpu_of(p)
                if c is not None:
                    self._start[p.pid] = c
        self.wall[0] = time.monotonic()

    def mark_end(self) -> None:
        seen_at_start = self._start
        self.groups = find_infra()
        for name, procs in self.groups.items():
            total = 0.0
            for p in procs:
                c = self._cpu_of(p)
                if c is None:
                    continue
                # a backend born during the window counts from its start
                total += c - seen_at_start.get(p.pid, 0.0)
            self.cpu[name] = max(0.0, total)
        self.wall[1] = time.monotonic()

    def sample(self) -> None:
        for name, procs in self.groups.items():
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), total)

    def rows(self) -> list[dict]:
        wall = self.wall[1] - self.wall[0]
        rows = []
        for name in self.groups:
            cpu = 100.0 * self.cpu.get(name, 0.0) / wall if wall > 0 else None
            rows.append({"process": name, "shared": True, "cpu_percent": cpu,
                         "peak_rss_mb": self.peak_rss.get(name, 0) / 2**20, "pids": len(self.groups[name])})
        return rows


def python() -> str:
    return sys.executable
