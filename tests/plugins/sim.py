"""Fixtures that run the exchange simulator (`python -m sim --port 0 ...`) as a subprocess.

- `sim_factory(**options)` (function scope): starts a simulator; options become CLI flags
  (`symbols=50` -> `--symbols 50`, `max_lifetime=3` -> `--max-lifetime 3`). Returns a `SimProcess`
  with `.env` (the NAME=value lines it printed), `.control` (sim.control.SimControl), `.port`,
  `.url(name)` and `.stop()`. Every simulator it started is stopped after the test.
- `sim`: one simulator with default options (200 symbols, 200 trades/s per exchange).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sim.control import SimControl
from sim.startup import read_start_env

ROOT = Path(__file__).resolve().parents[2]


class SimProcess:
    def __init__(self, args: list[str], start_timeout: float = 30.0):
        self.args = args
        self.proc = subprocess.Popen([sys.executable, "-m", "sim", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.env = read_start_env(self.proc, start_timeout, lambda: "stderr: " + "".join(self.stderr_lines)[-2000:])
        self.port = int(self.env["SIM_PORT"])
        self.control = SimControl(self.env["SIM_CONTROL_URL"])

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            del self.stderr_lines[:-500]

    def url(self, name: str) -> str:
        return self.env[name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def options_to_args(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    return args


@pytest.fixture
def sim_factory():
    started: list[SimProcess] = []

    def factory(**options) -> SimProcess:
        options.setdefault("port", 0)
        p = SimProcess(options_to_args(options))
        started.append(p)
        return p

    yield factory
    for p in started:
        p.stop()


@pytest.fixture
def sim(sim_factory) -> SimProcess:
    return sim_factory()
