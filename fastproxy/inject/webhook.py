"""`fastproxy webhook`: the mutating admission webhook server (TLS, HTTP/1.1).

    POST /inject   AdmissionReview v1 in, AdmissionReview v1 out (admission.py)
    GET  /healthz  200 "ok" (for the webhook Deployment's probes)

A small threaded server from the standard library: admission requests are
few, small and independent, and each is answered in about a millisecond, so
one thread per connection is the simplest thing that is robust here.

- TLS 1.2+, ALPN http/1.1. The certificate and key files are checked on
  every new connection and loaded again when either changes, so a rotated
  Secret (cert-manager) takes effect without a restart; a pair that fails to
  load is logged and the previous one kept.
- The TLS handshake runs in the connection's thread, not the accept loop,
  and every socket read has a timeout, so a stalled client holds one thread
  for at most IO_TIMEOUT_S and never blocks other connections.
- Keep-alive works (the API server reuses connections). Bodies are
  Content-Length only, at most MAX_BODY_BYTES.
- SIGTERM or SIGINT: stop accepting, finish the requests in flight, exit 0.
"""
from __future__ import annotations

import http.server
import logging
import os
import signal
import socket
import socketserver
import ssl
import threading
from urllib.parse import urlsplit

from . import admission
from .manifest import InjectOptions

log = logging.getLogger("fastproxy.webhook")

INJECT_PATH = "/inject"
HEALTH_PATH = "/healthz"
# The API server's request limit is 3 MiB; an AdmissionReview carries the
# object (and, for updates, the old one) plus a little framing.
MAX_BODY_BYTES = 8 << 20
IO_TIMEOUT_S = 30.0


class TlsFiles:
    """A certificate + key pair, loaded again whenever a file changes."""

    def __init__(self, cert_path: str, key_path: str):
        self.cert_path = cert_path
        self.key_path = key_path
        self._stamp = self._read_stamp()
        self._context = self._load()  # raises: the first load must work

    def _read_stamp(self) -> tuple:
        stamp = []
        for path in (self.cert_path, self.key_path):
            try:
                st = os.stat(path)
                stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def context(self) -> ssl.SSLContext:
        stamp = self._read_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._context = self._load()
                log.info("loaded the new certificate %s", self.cert_path)
            except (OSError, ssl.SSLError) as e:
                log.warning("keeping the previous certificate: cannot load %s / %s: %s",
                            self.cert_path, self.key_path, e)
        return self._context


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fastproxy-webhook"
    sys_version = ""
    timeout = IO_TIMEOUT_S
    server: "WebhookServer"

    def do_GET(self) -> None:
        if urlsplit(self.path).path == HEALTH_PATH:
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        if urlsplit(self.path).path != INJECT_PATH:
            self._refuse(404, "not found")
            return
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "send a Content-Length, not Transfer-Encoding")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._refuse(411, "Content-Length is required")
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self._refuse(413, f"body over {MAX_BODY_BYTES} bytes")
            return
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            self._refuse(415, "Content-Type must be application/json")
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return
        try:
            outcome = admission.handle(body, self.server.options)
        except admission.AdmissionError as e:
            log.warning("bad admission request from %s: %s", self.client_address[0], e)
            self._send(400, f"{e}\n".encode(), "text/plain")
            return
        except Exception:  # a bug: answer it, so the API server applies its failurePolicy at once
            log.exception("admission request from %s failed", self.client_address[0])
            self._send(500, b"internal error\n", "text/plain")
            return
        log.info("%s", outcome.summary)
        self._send(200, admission.encode(outcome), "application/json")

    def _refuse(self, status: int, reason: str) -> None:
        # The body was not read, so this connection cannot carry another request.
        self.close_connection = True
        self._send(status, f"{reason}\n".encode(), "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.client_address[0], format % args)


class WebhookServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = False  # server_close() waits for requests in flight
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, tls: TlsFiles, options: InjectOptions):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.tls = tls
        self.options = options
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() would resolve our own name (getfqdn), a
        # DNS lookup that can stall startup; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):
        sock, address = self.socket.accept()
        try:
            return self.tls.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address
        except Exception:
            sock.close()
            raise

    def finish_request(self, request, client_address) -> None:
        request.settimeout(IO_TIMEOUT_S)
        try:
            request.do_handshake()
        except (OSError, ssl.SSLError) as e:  # port scanners, TCP probes, wrong CA
            log.debug("TLS handshake with %s failed: %s", client_address[0], e)
            return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        log.warning("connection from %s failed", client_address[0], exc_info=True)


def serve(host: str, port: int, cert_path: str, key_path: str, options: InjectOptions) -> int:
    """Serves until SIGTERM or SIGINT. Returns the exit status."""
    try:
        tls = TlsFiles(cert_path, key_path)
    except (OSError, ssl.SSLError) as e:
        log.error("cannot load the certificate %s and key %s: %s", cert_path, key_path, e)
        return 1
    try:
        server = WebhookServer(host, port, tls, options)
    except OSError as e:
        log.error("cannot listen on %s port %d: %s", host, port, e.strerror or e)
        return 1
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    loop = threading.Thread(target=server.serve_forever, name="webhook-accept", daemon=True)
    loop.start()
    log.info("serving admission reviews on https://%s:%d%s (image %s, %s sidecar)", host,
             server.server_address[1], INJECT_PATH, options.image,
             "native" if options.native_sidecar else "classic")
    try:
        while not stop.wait(1.0):
            if not loop.is_alive():
                log.error("the accept loop stopped")
                return 1
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0
