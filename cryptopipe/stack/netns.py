""""Hosts" on one machine: a Linux network namespace per Kafka broker (KAFKA_HOSTS=netns), joined
to the machine's own namespace by a bridge, so a broker can be cut off the network (its link
down) rather than only killed. Needs root (`ip netns`, `ip link`).

    root namespace: bridge cp<offset>br 10.77.<k>.1/24
        |-- veth cp<offset>h<i> <-> eth0 in namespace cp<offset>k<i>: 10.77.<k>.<10+i>/24

The addresses are private and reach no further than this machine (nothing routes or forwards
them). <k> follows the port offset, so stacks at different offsets use different subnets and
interface names.
"""
from __future__ import annotations

import subprocess

from cryptopipe.stack.paths import PORT_OFFSET
from cryptopipe.stack.progress import StepFailed

_TAG = f"cp{PORT_OFFSET // 100}"           # interface names are at most 15 characters
SUBNET_OCTET = 1 + (PORT_OFFSET // 100) % 250
BRIDGE = f"{_TAG}br"
GATEWAY = f"10.77.{SUBNET_OCTET}.1"


def namespace(node: int) -> str:
    return f"{_TAG}k{node}"


def host_link(node: int) -> str:
    """The root-namespace end of node's veth pair: setting it down cuts the node off."""
    return f"{_TAG}h{node}"


def address(node: int) -> str:
    return f"10.77.{SUBNET_OCTET}.{10 + node}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise StepFailed("`ip` not found: install iproute2 (KAFKA_HOSTS=netns needs it)") from None
    if check and done.returncode != 0:
        raise StepFailed(f"`ip {' '.join(args)}` failed: {done.stderr.strip()[:300]} "
                         "(KAFKA_HOSTS=netns needs root)")
    return done


def _exists(kind: str, name: str) -> bool:
    if kind == "netns":
        return name in _ip("netns", "list", check=False).stdout.split()
    return _ip("link", "show", name, check=False).returncode == 0


def ensure_hosts(nodes: int) -> None:
    """The bridge and one namespace per node 1..nodes, links up (idempotent)."""
    if not _exists("link", BRIDGE):
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for node in range(1, nodes + 1):
        ns, host = namespace(node), host_link(node)
        if not _exists("netns", ns):
            _ip("netns", "add", ns)
        if not _exists("link", host):
            _ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", host, "master", BRIDGE)
            _ip("-n", ns, "addr", "add", f"{address(node)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("link", "set", host, "up")


def set_link(node: int, up: bool) -> None:
    """Connect (up) or cut off (down) node's namespace."""
    _ip("link", "set", host_link(node), "up" if up else "down")


def remove_hosts(nodes: int) -> None:
    """Delete the namespaces (their veth pairs go with them) and the bridge."""
    for node in range(1, nodes + 1):
        if _exists("netns", namespace(node)):
            _ip("netns", "delete", namespace(node), check=False)
    if _exists("link", BRIDGE):
        _ip("link", "delete", BRIDGE, check=False)
