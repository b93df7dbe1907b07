"""Test hosts in network namespaces: each gets its own address on a private bridge made for the test.

Only addresses on this bridge, inside namespaces the test itself created, are ever contacted.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Host:
    name: str
    namespace: str
    address: str
    veth_root: str

    def command(self, args: list[str]) -> list[str]:
        """``args`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *args]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"fpprobe{uuid.uuid4().hex[:6]}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`ip netns add` is not permitted here: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@contextmanager
def hosts(names: list[str], subnet: str = "10.213.7") -> Iterator[dict[str, Host]]:
    """One namespace per name, each with a veth into a shared bridge; all removed afterwards."""
    tag = uuid.uuid4().hex[:5]
    bridge = f"fpbr{tag}"
    made: dict[str, Host] = {}
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("link", "set", bridge, "up")
        for k, name in enumerate(names):
            ns, root, inner = f"fp{tag}{k}", f"fpv{tag}{k}", f"fpi{tag}{k}"
            _ip("netns", "add", ns)
            _ip("link", "add", root, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", root, "master", bridge)
            _ip("link", "set", root, "up")
            address = f"{subnet}.{10 + k}"
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", inner)
            _ip("netns", "exec", ns, "ip", "link", "set", inner, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
            made[name] = Host(name, ns, address, root)
        yield made
    finally:
        for host in made.values():
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
            subprocess.run(["ip", "link", "del", host.veth_root], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def set_link(host: Host, up: bool) -> None:
    """Cut (``up=False``) or restore a host's only link, as a pulled cable would."""
    _ip("link", "set", host.veth_root, "up" if up else "down")
