"""supervisord over its XML-RPC unix socket: program states, stop, start.

The socket path is `common.settings.get_settings().supervisor_socket` unless given; the client
comes from `common.supervisor_rpc.supervisor_proxy` (the one factory).
"""
from __future__ import annotations

import http.client
import time
import xmlrpc.client

from airflow.sdk import BaseHook

from plugins.supervision import ProgramStatus

# supervisor.xmlrpc.Faults, copied as plain numbers so this module imports without supervisor
ABNORMAL_TERMINATION, SPAWN_ERROR, ALREADY_STARTED, NOT_RUNNING = 40, 50, 60, 70


class SupervisorUnreachable(ConnectionError):
    """supervisord's control socket does not answer."""


class SupervisorHook(BaseHook):
    """Reads and controls the streaming daemons run by supervisord."""

    hook_name = "supervisord"

    def __init__(self, socket_path: str | None = None, settle_s: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.socket_path = socket_path
        self.settle_s = settle_s
        self._proxy = None

    def get_conn(self):
        if self._proxy is None:
            from common.supervisor_rpc import supervisor_proxy

            self._proxy = supervisor_proxy(self.socket_path)
        return self._proxy

    def _socket(self) -> str:
        if self.socket_path:
            return self.socket_path
        from common.settings import get_settings

        return get_settings().supervisor_socket

    def _read(self, method: str, *args):
        try:
            return getattr(self.get_conn().supervisor, method)(*args)
        except (OSError, http.client.HTTPException) as exc:
            self._proxy = None      # a transport that failed mid-request cannot be reused
            raise SupervisorUnreachable(f"supervisord does not answer on {self._socket()}: "
                                        f"{type(exc).__name__}: {exc}") from exc

    def get_all_programs(self) -> list[ProgramStatus]:
        return [ProgramStatus.from_rpc(info) for info in self._read("getAllProcessInfo")]

    def get_program(self, fullname: str) -> ProgramStatus:
        return ProgramStatus.from_rpc(self._read("getProcessInfo", fullname))

    def restart(self, program: ProgramStatus) -> ProgramStatus:
        """Stop (if running) and start `program`, waiting for supervisord's verdict; return its
        state once it has settled. A refused start is reported in the returned state, not raised."""
        rpc = self.get_conn().supervisor
        name = program.fullname
        self.log.warning("restarting %s (was %s)", name, program.state)
        try:
            rpc.stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != NOT_RUNNING:
                raise
        try:
            # wait=True returns once the program has stayed up for its `startsecs`
            rpc.startProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode not in (ALREADY_STARTED, SPAWN_ERROR, ABNORMAL_TERMINATION):
                raise
            self.log.error("supervisord refused to start %s: %s", name, fault.faultString)
        # a program that dies right after startsecs shows up here rather than as RUNNING
        time.sleep(self.settle_s)
        after = self.get_program(name)
        self.log.info("%s is %s after restart", name, after.state)
        return after
