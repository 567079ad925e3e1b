"""Progress output for the stack's steps: one line per step with its duration; a failing step
prints what failed and the last lines of the component's log, then the command exits non-zero."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

console = Console(stderr=True, highlight=False)


class StepFailed(RuntimeError):
    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log


def tail(path: Path | None, lines: int = 25) -> str:
    if not path or not path.exists():
        return ""
    data = path.read_bytes()[-20000:].decode("utf-8", "replace").splitlines()
    return "\n".join(data[-lines:])


@contextmanager
def step(name: str):
    start = time.monotonic()
    if console.is_terminal:
        console.print(f"[bold]…[/bold] {name}", end="\r")
    try:
        yield
    except StepFailed as exc:
        console.print(f"[red]✗[/red] {name} ({time.monotonic() - start:.1f}s): {exc}")
        log_tail = tail(exc.log)
        if log_tail:
            console.print(f"[dim]--- last lines of {exc.log} ---[/dim]\n{log_tail}", markup=False)
        raise
    except Exception as exc:
        console.print(f"[red]✗[/red] {name} ({time.monotonic() - start:.1f}s): {exc}")
        raise
    console.print(f"[green]✓[/green] {name} ({time.monotonic() - start:.1f}s)")


def wait_until(check, timeout: float, what: str, log: Path | None = None, interval: float = 0.2):
    """Poll `check()` until it returns truthy; raise StepFailed naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the component is not ready yet
            last_exc = exc
        time.sleep(interval)
    detail = f" (last error: {last_exc})" if last_exc else ""
    raise StepFailed(f"{what} not ready after {timeout:.0f}s{detail}", log)
