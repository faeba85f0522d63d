"""Which host names a request to one of the studio's servers may carry (the web UI's front door, ui/guard.py,
and the OpenAI-compatible API, backend/serve/openai_api.py).

A page on evil.example whose name the attacker rebinds to 127.0.0.1 (DNS rebinding) reaches a server on this
machine with `Host: evil.example`, past the browser's same-origin rule. Allowed: the loopback names, the bound
address, and when bound to all interfaces this machine's own names and addresses; anything else only by name
(`--allowed-hosts`). Jupyter (allow_remote_access) and Ollama (its allowed-hosts check) do the same.
"""
from __future__ import annotations

import ipaddress
import os
import socket

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def host_name(netloc: str) -> str:
    """The host part of a Host header or URL netloc, lower case, without port or brackets."""
    netloc = netloc.strip().lower().rpartition("@")[2]
    if netloc.startswith("["):
        return netloc[1:].partition("]")[0]
    if netloc.count(":") > 1:            # a bare IPv6 address
        return netloc
    return netloc.partition(":")[0].rstrip(".")


def machine_names() -> set[str]:
    """This machine's hostname, its fully qualified name, and the addresses of its interfaces."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    try:
        import psutil
        for addresses in psutil.net_if_addrs().values():
            names.update(a.address.partition("%")[0].lower() for a in addresses
                         if a.family in (socket.AF_INET, socket.AF_INET6))
    except Exception:  # noqa: BLE001 - a machine that hides its interfaces still has its names
        pass
    return {n for n in names if n}


def allowed_hosts(bound: str) -> frozenset[str]:
    """The host names a request may carry: loopback, the bound address, and this machine's own names and
    addresses when bound to all interfaces. The user's own (`--allowed-hosts`) come on top, as `trusted`."""
    hosts = set(LOOPBACK_NAMES)
    bound = host_name(bound) if bound not in WILDCARD_BINDS else bound
    if bound in WILDCARD_BINDS:
        hosts |= machine_names()
    else:
        hosts.add(bound)
    return frozenset(hosts)


def parse_allowed_hosts(text: str | None) -> frozenset[str]:
    """`--allowed-hosts a.example,b.example` (or LORASTUDIO_ALLOWED_HOSTS) -> host names; `*` allows any
    host and origin, which turns both checks off."""
    text = text if text is not None else os.environ.get("LORASTUDIO_ALLOWED_HOSTS", "")
    return frozenset("*" if part.strip() == "*" else host_name(part)
                     for part in (text or "").split(",") if part.strip())


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    name = host_name(host)
    if "*" in allowed or name in allowed:
        return True
    # *.localhost always resolves to loopback in browsers (RFC 6761), so it cannot be rebound
    if name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
