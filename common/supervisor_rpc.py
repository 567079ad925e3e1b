"""The one supervisord XML-RPC client factory (unix socket), used by the stack manager and by
Airflow's supervisor hook."""
from __future__ import annotations

import xmlrpc.client

from common.settings import get_settings


def supervisor_proxy(socket_path: str | None = None):
    """A ServerProxy on supervisord's unix socket; `.supervisor.getAllProcessInfo()` etc."""
    from supervisor.xmlrpc import SupervisorTransport

    path = socket_path or get_settings().supervisor_socket
    transport = SupervisorTransport(None, None, serverurl=f"unix://{path}")
    # the URL's host is ignored by the unix transport
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport, allow_none=True)


def numbered_program(process: str) -> str | None:
    """The program of a process supervisord numbered (`numprocs`, process_name
    `%(program_name)s_%(process_num)02d`): `load_01` -> `load`; None for any other name."""
    base, sep, num = process.rpartition("_")
    return base if sep and base and num.isdigit() else None
