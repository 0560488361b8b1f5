"""`fastproxy inject` and `fastproxy webhook`.

The main CLI registers both with add_parsers(subparsers). Every option is
also a FASTPROXY_* environment variable (named below); the flag wins.

Exit status of `inject`: 0 done, 1 a file could not be read or written,
2 bad flags, YAML or annotations. `webhook`: 0 after SIGTERM/SIGINT,
1 cannot load the certificate or listen, 2 bad flags or variables.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping

from .annotations import NATIVE_SIDECAR, PROXY_IMAGE, render_help
from .manifest import DEFAULT_IMAGE, InjectError, InjectOptions, inject_yaml
from .webhook import serve

FASTPROXY_INJECT_IMAGE = "FASTPROXY_INJECT_IMAGE"
FASTPROXY_INJECT_NATIVE_SIDECAR = "FASTPROXY_INJECT_NATIVE_SIDECAR"
FASTPROXY_WEBHOOK_ADDRESS = "FASTPROXY_WEBHOOK_ADDRESS"
FASTPROXY_WEBHOOK_PORT = "FASTPROXY_WEBHOOK_PORT"
FASTPROXY_WEBHOOK_CERT = "FASTPROXY_WEBHOOK_CERT"
FASTPROXY_WEBHOOK_KEY = "FASTPROXY_WEBHOOK_KEY"

DEFAULT_WEBHOOK_ADDRESS = "0.0.0.0"
DEFAULT_WEBHOOK_PORT = 9443

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class UsageError(ValueError):
    pass


def add_parsers(subparsers) -> None:
    """Registers `inject` and `webhook` on the main CLI's subparsers."""
    inject = subparsers.add_parser(
        "inject", help="add the fastproxy init container and sidecar to Kubernetes manifests",
        description="Inject the fastproxy-init container and the fastproxy sidecar into every workload "
                    "(Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, "
                    "CronJob, List) of a YAML or JSON stream. Other documents are copied unchanged. "
                    "Injecting twice equals injecting once.",
        epilog=render_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    inject.add_argument("-f", "--filename", required=True, metavar="FILE", help="manifest to read; '-' for stdin")
    inject.add_argument("-o", "--output", metavar="FILE", help="where to write (default: stdout)")
    _add_injection_options(inject)
    inject.set_defaults(func=run_inject)

    webhook = subparsers.add_parser(
        "webhook", help="serve the mutating admission webhook (HTTPS, POST /inject)",
        description="Serve a Kubernetes mutating admission webhook over TLS: POST /inject takes an "
                    "AdmissionReview v1 for a Pod and answers with a JSONPatch that injects it; "
                    "GET /healthz answers ok. The certificate and key are reloaded when the files change.",
        epilog=render_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    webhook.add_argument("--address", metavar="ADDR",
                         help=f"address to listen on (default {DEFAULT_WEBHOOK_ADDRESS}) "
                              f"[env {FASTPROXY_WEBHOOK_ADDRESS}]")
    webhook.add_argument("--port", metavar="PORT",
                         help=f"port to listen on (default {DEFAULT_WEBHOOK_PORT}) [env {FASTPROXY_WEBHOOK_PORT}]")
    webhook.add_argument("--cert", metavar="FILE",
                         help=f"PEM certificate chain (required) [env {FASTPROXY_WEBHOOK_CERT}]")
    webhook.add_argument("--key", metavar="FILE", help=f"PEM private key (required) [env {FASTPROXY_WEBHOOK_KEY}]")
    _add_injection_options(webhook)
    webhook.set_defaults(func=run_webhook)


def _add_injection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", metavar="IMAGE",
                   help=f"image of the injected containers (default {DEFAULT_IMAGE}); the annotation "
                        f"{PROXY_IMAGE} overrides it per pod [env {FASTPROXY_INJECT_IMAGE}]")
    p.add_argument("--native-sidecar", nargs="?", const="true", default=None, metavar="true|false",
                   help="inject the proxy as a native sidecar (init container with restartPolicy: Always; "
                        f"Kubernetes >= 1.29); the annotation {NATIVE_SIDECAR} overrides it per "
                        f"pod [env {FASTPROXY_INJECT_NATIVE_SIDECAR}]")


def _bool(raw: str, source: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise UsageError(f"{source}: expected true or false, got {raw!r}")


def injection_options(args: argparse.Namespace, environ: Mapping[str, str]) -> InjectOptions:
    image = args.image if args.image is not None else environ.get(FASTPROXY_INJECT_IMAGE, DEFAULT_IMAGE)
    image = image.strip()
    if not image or any(ch.isspace() for ch in image):
        raise UsageError(f"--image/{FASTPROXY_INJECT_IMAGE}: {image!r} is not an image reference")
    native = False
    if args.native_sidecar is not None:
        native = _bool(args.native_sidecar, "--native-sidecar")
    elif FASTPROXY_INJECT_NATIVE_SIDECAR in environ:
        native = _bool(environ[FASTPROXY_INJECT_NATIVE_SIDECAR], FASTPROXY_INJECT_NATIVE_SIDECAR)
    return InjectOptions(image=image, native_sidecar=native)


def run_inject(args: argparse.Namespace) -> int:
    try:
        options = injection_options(args, os.environ)
    except UsageError as e:
        print(f"fastproxy inject: {e}", file=sys.stderr)
        return 2
    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        print(f"fastproxy inject: cannot read {args.filename}: {e}", file=sys.stderr)
        return 1
    try:
        out, notes = inject_yaml(text, options)
    except InjectError as e:
        print(f"fastproxy inject: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"fastproxy inject: {note}", file=sys.stderr)
    if not args.output or args.output == "-":
        sys.stdout.write(out)
        sys.stdout.flush()
        return 0
    try:
        _write_atomically(args.output, out)
    except OSError as e:
        print(f"fastproxy inject: cannot write {args.output}: {e}", file=sys.stderr)
        return 1
    return 0


def _write_atomically(path: str, text: str) -> None:
    """Readers see the old file or the new one, never half of it (and -o may equal -f)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastproxy-inject-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _setting(flag: str | None, environ: Mapping[str, str], env: str, label: str) -> tuple[str | None, str]:
    if flag is not None:
        return flag, label
    if env in environ:
        return environ[env], env
    return None, label


def run_webhook(args: argparse.Namespace) -> int:
    environ = os.environ
    try:
        options = injection_options(args, environ)
        address, _ = _setting(args.address, environ, FASTPROXY_WEBHOOK_ADDRESS, "--address")
        raw_port, port_source = _setting(args.port, environ, FASTPROXY_WEBHOOK_PORT, "--port")
        port = DEFAULT_WEBHOOK_PORT
        if raw_port is not None:
            try:
                port = int(raw_port)
            except ValueError:
                raise UsageError(f"{port_source}: expected a port number, got {raw_port!r}") from None
            if not 0 <= port <= 65535:
                raise UsageError(f"{port_source}: port {port} is out of range 0-65535")
        cert, _ = _setting(args.cert, environ, FASTPROXY_WEBHOOK_CERT, "--cert")
        key, _ = _setting(args.key, environ, FASTPROXY_WEBHOOK_KEY, "--key")
        if not cert or not key:
            raise UsageError(f"a certificate and key are required: --cert/{FASTPROXY_WEBHOOK_CERT} and "
                             f"--key/{FASTPROXY_WEBHOOK_KEY}")
    except UsageError as e:
        print(f"fastproxy webhook: {e}", file=sys.stderr)
        return 2
    return serve((address or DEFAULT_WEBHOOK_ADDRESS).strip(), port, cert, key, options)
