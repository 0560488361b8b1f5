"""`fastproxy init`: the init-container mode, a drop-in for istio-iptables.

The main CLI registers it with add_parser(subparsers); run(args) does the work.
Exit status: 0 done, 1 a command failed, 2 bad flags or variables,
126 --run-validation found that redirection does not work (Istio's code).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from . import apply
from .flags import FLAGS, InitConfigError, describe, field_doc, from_sources

log = logging.getLogger("fastproxy.init")

_DESCRIPTION = """\
Set up transparent interception for the fastproxy sidecar in this network
namespace: inbound TCP to the inbound listener, outbound TCP to the outbound
listener, with iptables (legacy or nft) or native nftables. Accepts
istio-iptables' flags with the same meaning; each flag can also be given as
the environment variable shown with it (the flag wins).

Always excluded: the proxy's own traffic (-u/-g), loopback (except the
proxy's connections to this pod's own address, which go to the inbound
listener), inbound ports 15000, 15020, 15021 and 15090, and inbound
passthrough connections from 127.0.0.6 (::6).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `init` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "init", help="set up traffic interception (init container; istio-iptables flags)",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in FLAGS:
        names = [n for n in (flag.short, flag.long) if n]
        help_text = f"{_strip_flag_prefix(field_doc(flag.field))} [env {flag.env}]"
        if flag.kind == "bool":
            p.add_argument(*names, dest=flag.field, nargs="?", const="true", default=None,
                           metavar="true|false", help=help_text)
        else:
            p.add_argument(*names, dest=flag.field, default=None, metavar=flag.metavar, help=help_text)
    p.set_defaults(func=run)
    return p


def _strip_flag_prefix(doc: str) -> str:
    # The field docs start with their flag ("-p: ..."); argparse shows the flag already.
    head, sep, rest = doc.partition(": ")
    return rest if sep and head.startswith("-") else doc


def run(args: argparse.Namespace) -> int:
    flag_values = {f.field: getattr(args, f.field, None) for f in FLAGS}
    try:
        cfg = from_sources(flag_values, os.environ)
    except InitConfigError as e:
        print(f"fastproxy init: {e}", file=sys.stderr)
        return 2
    runner = apply.Runner(simulate=cfg.dry_run)
    try:
        if cfg.cleanup:
            apply.cleanup(runner)
            return 0
        cfg = apply.effective_config(cfg, runner)
        log.info("fastproxy init configuration:\n%s", describe(cfg))
        backend = apply.install(cfg, runner)
    except apply.InitError as e:
        print(f"fastproxy init: {e}", file=sys.stderr)
        return 1
    if cfg.dry_run:
        return 0
    log.info("fastproxy init: interception in place (%s, %s)", backend, cfg.inbound_interception_mode)
    if cfg.run_validation:
        problem = apply.validate(cfg)
        if problem:
            print(f"fastproxy init: validation failed: {problem}", file=sys.stderr)
            return apply.EXIT_VALIDATION_FAILED
        log.info("fastproxy init: validation passed")
    return 0
