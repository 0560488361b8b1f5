"""The worker's listening sockets: one SO_REUSEPORT socket per listener address.

Each worker binds its own sockets, so the kernel spreads new connections
across workers. reconcile() brings the bound set in line with a new table:
new addresses are bound, gone ones closed, kept ones re-pointed at the new
listener object, all without dropping a queued connection on a kept socket.
"""
from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from ..config.schema import hostport
from ..routing.table import ListenerRoute

log = logging.getLogger("fastproxy.worker")

Addr = tuple[str, int]
AcceptCallback = Callable[[ListenerRoute, int], None]

# Families a host may lack (no IPv6): an additional address of such a family is skipped.
_MISSING_FAMILY = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)

# <linux/in.h> and <linux/in6.h>; Python's socket module lacks the IPv6 one.
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75


def set_transparent(s: socket.socket, on: bool) -> None:
    """IP_TRANSPARENT (IPV6_TRANSPARENT on an IPv6 socket): the mangle TPROXY
    target delivers connections only to listeners that set it. Needs
    CAP_NET_ADMIN (or CAP_NET_RAW); a refusal is an OSError naming the setting."""
    if s.family == socket.AF_INET6:
        level, opt, name = socket.IPPROTO_IPV6, IPV6_TRANSPARENT, "IPV6_TRANSPARENT"
    else:
        level, opt, name = socket.SOL_IP, IP_TRANSPARENT, "IP_TRANSPARENT"
    try:
        s.setsockopt(level, opt, int(on))
    except OSError as e:
        hint = " (needs CAP_NET_ADMIN, or CAP_NET_RAW)" if e.errno == errno.EPERM else ""
        raise OSError(e.errno, f"settings.inbound_interception_mode is TPROXY but {name} was refused{hint}: "
                               f"{e.strerror}") from None


def bind_listener(addr: Addr, backlog: int, transparent: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # IPv4 has its own socket; a dual-stack one would hide SO_ORIGINAL_DST.
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if transparent:
            set_transparent(s, True)
        s.bind(addr)
        s.listen(backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class ListenerSet:
    def __init__(self, loop, on_accept: AcceptCallback):
        self.loop = loop
        self.on_accept = on_accept
        self.bound: dict[Addr, tuple[socket.socket, ListenerRoute]] = {}
        self.accepting = True

    def reconcile(self, listeners: list[ListenerRoute], backlog: int, strict: bool) -> list[str]:
        """Binds/unbinds to match `listeners`. Returns error strings. With
        strict, a bind failure of a primary address raises OSError."""
        errors = []
        wanted: dict[Addr, ListenerRoute] = {}
        primary: set[Addr] = set()
        for l in listeners:
            primary.add(l.addresses[0])
            for a in l.addresses:
                wanted[a] = l
        for addr in [a for a in self.bound if a not in wanted]:
            self._close(addr)
        for addr, l in wanted.items():
            if addr in self.bound:
                sock, old = self.bound[addr]
                if l.transparent != old.transparent:
                    # The mode changed on reload: the kept socket follows (TPROXY checks it per packet).
                    try:
                        set_transparent(sock, l.transparent)
                    except OSError as e:
                        msg = f"listener {l.name}: {hostport(*addr)}: {e.strerror}"
                        log.error("%s", msg)
                        errors.append(msg)
                self.bound[addr] = (sock, l)
                if self.accepting:
                    self.loop.add_reader(sock.fileno(), self.on_accept, l, sock.fileno())
                continue
            try:
                sock = bind_listener(addr, backlog, l.transparent)
            except OSError as e:
                if addr not in primary and e.errno in _MISSING_FAMILY:
                    log.warning("listener %s: skipping %s: %s", l.name, hostport(*addr), e.strerror)
                    continue
                msg = f"listener {l.name}: cannot bind {hostport(*addr)}: {e.strerror}"
                if strict:
                    raise OSError(e.errno, msg) from None
                log.error("%s", msg)
                errors.append(msg)
                continue
            self.bound[addr] = (sock, l)
            if self.accepting:
                self.loop.add_reader(sock.fileno(), self.on_accept, l, sock.fileno())
        return errors

    def stop_accepting(self) -> None:
        """Serves what is already queued, then closes every listening socket."""
        self.accepting = False
        for addr in list(self.bound):
            self._close(addr)

    def _close(self, addr: Addr) -> None:
        sock, l = self.bound.pop(addr)
        fd = sock.fileno()
        self.loop.remove_reader(fd)
        # Take what the kernel already queued on this socket before closing it:
        # close() would reset those connections.
        self.on_accept(l, fd)
        sock.close()

    def is_bound(self, fd: int) -> bool:
        return self.accepting and any(s.fileno() == fd for s, _ in self.bound.values())
