"""An echo upstream: one thread, a selector, any number of connections.

Each connection gets `tag` first (if any), then every byte it sends, back.
Half-close is honoured: when the client's write side ends, the server
flushes what it owes and then shuts down its own write side. Reads pause
while 1 MiB is owed (backpressure), so a fast sender cannot bloat it.

Run as a script (`python -m tests.support.echo_server --listen HOST:PORT`)
for an upstream in another network namespace: it prints one JSON line per
accepted connection, {"peer": [host, port], "local": [host, port]}.
"""
import argparse
import json
import selectors
import socket
import sys
import threading

MAX_OWED = 1 << 20


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def listen_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen(backlog)
    s.setblocking(False)
    return s


class _Conn:
    __slots__ = ("sock", "owed", "eof", "shut")

    def __init__(self, sock: socket.socket, tag: bytes):
        self.sock = sock
        self.owed = bytearray(tag)
        self.eof = False
        self.shut = False


class EchoServer:
    def __init__(self, tag: bytes = b"", listen: list[tuple[str, int]] | None = None,
                 on_accept=None):
        self.tag = tag
        self.listeners = [listen_socket(h, p) for h, p in (listen or [("127.0.0.1", 0)])]
        self.on_accept = on_accept
        self.accepted = 0
        self.peers: list[tuple] = []
        self.lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"echo{tag!r}", daemon=True)

    @property
    def port(self) -> int:
        return self.listeners[0].getsockname()[1]

    @property
    def address(self) -> str:
        host, port = self.listeners[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> "EchoServer":
        for ls in self.listeners:
            self._sel.register(ls, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=10)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()
        self._sel.close()
        self._wake_w.close()

    def __enter__(self) -> "EchoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _interest(self, c: _Conn) -> int:
        ev = 0
        if not c.eof and len(c.owed) < MAX_OWED:
            ev |= selectors.EVENT_READ
        if c.owed:
            ev |= selectors.EVENT_WRITE
        return ev

    def _update(self, c: _Conn) -> None:
        if c.eof and not c.owed and not c.shut:
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            c.shut = True
        if c.shut:
            self._drop(c)
            return
        ev = self._interest(c)
        if ev:
            self._sel.modify(c.sock, ev, c)
        else:
            self._drop(c)

    def _drop(self, c: _Conn) -> None:
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                sock, peer = ls.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            with self.lock:
                self.accepted += 1
                self.peers.append(peer)
            if self.on_accept:
                self.on_accept(peer, sock.getsockname())
            c = _Conn(sock, self.tag)
            self._sel.register(sock, self._interest(c), c)

    def _run(self) -> None:
        while not self._stop:
            for key, events in self._sel.select(timeout=1.0):
                if key.data == "wake":
                    return
                if key.data is None:
                    self._accept(key.fileobj)
                    continue
                c: _Conn = key.data
                try:
                    if events & selectors.EVENT_READ:
                        data = c.sock.recv(262144)
                        if data:
                            c.owed += data
                        else:
                            c.eof = True
                    if c.owed and (events & selectors.EVENT_WRITE or events & selectors.EVENT_READ):
                        try:
                            n = c.sock.send(c.owed)
                            del c.owed[:n]
                        except BlockingIOError:
                            pass
                except OSError:
                    self._drop(c)
                    continue
                self._update(c)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", action="append", required=True, help="HOST:PORT, repeatable")
    ap.add_argument("--tag", default="", help="bytes sent first on every connection")
    args = ap.parse_args(argv)

    def report(peer, local):
        print(json.dumps({"peer": list(peer[:2]), "local": list(local[:2])}), flush=True)

    server = EchoServer(args.tag.encode(), [parse_hostport(a) for a in args.listen], on_accept=report)
    server.start()
    print(json.dumps({"listening": [ls.getsockname()[:2] for ls in server.listeners]}), flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
