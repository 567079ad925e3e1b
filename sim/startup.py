"""The simulator's start protocol: once bound, it prints the environment that points a pipeline
at it, one `NAME=value` per line on stdout; whoever started it reads those lines back."""
from __future__ import annotations

import subprocess
import threading
from typing import Callable

START_KEYS = ("BINANCE_WS_URL", "BINANCE_REST_URL", "KUCOIN_REST_URL", "SIM_CONTROL_URL", "SIM_PORT")


def format_start_lines(env: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in env.items())


def read_start_env(proc: subprocess.Popen, timeout: float = 60.0,
                   describe: Callable[[], str] = lambda: "") -> dict[str, str]:
    """Read `proc`'s NAME=value lines (text-mode stdout) until every START_KEYS is there.

    The process is killed after `timeout` seconds without them; an early exit raises
    RuntimeError with the exit code and `describe()` (e.g. the tail of its stderr)."""
    env: dict[str, str] = {}
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        while not all(k in env for k in START_KEYS):
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"simulator exited before printing its environment (rc={proc.poll()}):\n"
                                   f"{describe()}")
            name, sep, value = line.strip().partition("=")
            if sep:
                env[name] = value
    finally:
        timer.cancel()
    return env
