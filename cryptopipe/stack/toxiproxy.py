"""Toxiproxy (Shopify/toxiproxy v2) for network-fault tests: install it, run it, drive its API.

    from cryptopipe.stack.toxiproxy import Toxiproxy, ensure_toxiproxy_binary
    with Toxiproxy.start() as toxi:                        # a private server on a free port
        pg = toxi.create_proxy("pg", upstream="127.0.0.1:5432")   # listens on a free port
        toxi.add_toxic("pg", "latency", latency=300, jitter=100)
        toxi.disable("pg"); toxi.enable("pg"); toxi.reset()

The binary is built once from the Go module proxy (`go install …/cmd/server@v2.12.0`, ~2 min cold)
into the cache and kept as `<cache>/bin/toxiproxy-server-2.12.0`; later calls reuse it.
`python -m cryptopipe.stack.toxiproxy` builds it (a CI warm-up step) and prints its path.

Kafka needs the broker to advertise the proxy's address: the stack's broker has a listener for
that (`TOXI`, SCRAM-authenticated like the client listener, see cryptopipe/stack/kafka.py);
the fault tests' fixture (tests/plugins/toxiproxy.py) restarts a broker started before that
listener existed.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from common.settings import cache_home
from cryptopipe.stack.kafka import KAFKA_TOXI_PORT, KAFKA_TOXI_PROXY_PORT

TOXIPROXY_VERSION = "2.12.0"
TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
BUILD_TIMEOUT_S = 900


class ToxiproxyError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- install

def binary_path() -> Path:
    return cache_home() / "bin" / f"toxiproxy-server-{TOXIPROXY_VERSION}"


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_toxiproxy_binary(log=None) -> Path:
    """The toxiproxy server binary, built with `go install` from the Go module proxy if missing.
    Concurrent callers wait for one build (file lock)."""
    target = binary_path()
    if target.exists():
        return target
    with file_lock(cache_home() / "bin" / ".toxiproxy-build.lock"):
        if target.exists():
            return target
        go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
        if not go:
            raise ToxiproxyError("`go` not found on PATH: install Go (>= 1.22) to build toxiproxy "
                                 f"{TOXIPROXY_VERSION}, or put its server binary at {target}")
        gobin = cache_home() / "bin" / f".toxiproxy-build-{os.getpid()}"
        gobin.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, GOPATH=str(cache_home() / "go"), GOBIN=str(gobin), GOFLAGS="-mod=mod",
                   CGO_ENABLED="0")
        if log:
            log(f"building toxiproxy {TOXIPROXY_VERSION} with go install (about 2 minutes the first time)")
        try:
            proc = subprocess.run([go, "install", f"{TOXIPROXY_MODULE}@v{TOXIPROXY_VERSION}"], env=env,
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            built = gobin / "server"
            if proc.returncode != 0 or not built.exists():
                raise ToxiproxyError(f"go install {TOXIPROXY_MODULE}@v{TOXIPROXY_VERSION} failed "
                                     f"(exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
            os.replace(built, target)      # same filesystem: atomic, never a half-written binary
        finally:
            shutil.rmtree(gobin, ignore_errors=True)
        return target


# ----------------------------------------------------------------------------- server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Toxiproxy:
    """A toxiproxy server subprocess bound to 127.0.0.1, and a client of its HTTP API."""

    def __init__(self, api_port: int, proc: subprocess.Popen | None = None, log_path: Path | None = None):
        self.api_port = api_port
        self.proc = proc
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{api_port}"
        self.proxies: dict[str, dict] = {}

    @classmethod
    def start(cls, log_path: Path | None = None, port: int = 0, timeout: float = 30.0) -> "Toxiproxy":
        binary = ensure_toxiproxy_binary()
        port = port or free_port()
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            proc = subprocess.Popen([str(binary), "-host", "127.0.0.1", "-port", str(port)],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log_path:
                out.close()
        server = cls(port, proc, log_path)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ToxiproxyError(f"toxiproxy exited {proc.returncode} at start: {server.log_tail()}")
            try:
                server.version()
                return server
            except (OSError, ToxiproxyError):
                if time.monotonic() > deadline:
                    server.stop()
                    raise ToxiproxyError(f"toxiproxy did not answer on 127.0.0.1:{port}: {server.log_tail()}")
                time.sleep(0.1)

    def __enter__(self) -> "Toxiproxy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 2000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    # --- HTTP API
    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise ToxiproxyError(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def version(self) -> str:
        return str(self._call("GET", "/version"))

    def create_proxy(self, name: str, upstream: str, listen_port: int = 0) -> int:
        """A proxy 127.0.0.1:<listen_port> -> upstream ('host:port'); returns the port it listens on."""
        port = listen_port or free_port()
        self._call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}", "upstream": upstream,
                                        "enabled": True})
        self.proxies[name] = {"port": port, "upstream": upstream}
        return port

    def delete_proxy(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}")
        self.proxies.pop(name, None)

    def proxy(self, name: str) -> dict:
        return self._call("GET", f"/proxies/{name}")

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disabled: the proxy stops listening and closes every connection through it (a partition)."""
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    def disable(self, name: str) -> None:
        self.set_enabled(name, False)

    def enable(self, name: str) -> None:
        self.set_enabled(name, True)

    def add_toxic(self, proxy: str, type_: str, *, stream: str = "downstream", name: str | None = None,
                  toxicity: float = 1.0, **attributes) -> str:
        """Add a toxic (latency, reset_peer, timeout, bandwidth, slow_close, slicer, limit_data);
        returns its name."""
        name = name or f"{type_}_{stream}"
        self._call("POST", f"/proxies/{proxy}/toxics", {"name": name, "type": type_, "stream": stream,
                                                         "toxicity": toxicity, "attributes": attributes})
        return name

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def toxics(self, proxy: str) -> list[dict]:
        return self._call("GET", f"/proxies/{proxy}/toxics") or []

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        self._call("POST", "/reset")


# ----------------------------------------------------------------------------- Kafka

def kafka_toxi_listener_up(timeout: float = 5.0) -> bool:
    """The stack's broker answers metadata on its TOXI listener (it was started with it)."""
    if not port_open(KAFKA_TOXI_PORT):
        return False
    from common.kafka import make_admin

    try:
        # the broker advertises the proxy's port there; metadata alone needs only the bootstrap
        # log_level 0: the advertised proxy port may not be listening yet, which is no news
        md = make_admin({"bootstrap.servers": f"127.0.0.1:{KAFKA_TOXI_PORT}", "log_level": 0}
                        ).list_topics(timeout=timeout)
    except Exception:
        return False
    return any(b.port == KAFKA_TOXI_PROXY_PORT for b in md.brokers.values())


def main(argv: list[str] | None = None) -> int:
    try:
        path = ensure_toxiproxy_binary(log=lambda m: print(m, file=sys.stderr))
    except ToxiproxyError as exc:
        print(f"toxiproxy: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
