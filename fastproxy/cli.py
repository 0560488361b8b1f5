"""The command line: fastproxy run | init | explain | status | inject | webhook | config check|env|dump | --version."""
from __future__ import annotations

import argparse
import logging
import os
import sys

import orjson

from . import __version__
from .config.load import load_default, load_text
from .config.schema import ConfigError
from .config.env import CONFIG_FILE_VAR, render_env_help
from .explain import add_parser as add_explain_parser
from .inject.cli import add_parsers as add_inject_parsers
from .interception.cli import add_parser as add_init_parser
from .status import add_parser as add_status_parser


def _config_path(args) -> str | None:
    return getattr(args, "config", None) or os.environ.get(CONFIG_FILE_VAR) or None


def cmd_run(args) -> int:
    from .manager.main import run

    return run(_config_path(args), os.environ)


def cmd_config_check(args) -> int:
    try:
        with open(args.file, "rb") as f:
            load_text(f.read(), os.environ, source=args.file)
    except OSError as e:
        print(f"config error: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 1
    print("ok")
    return 0


def cmd_config_env(args) -> int:
    from .interception.flags import render_env_help as init_env_help

    print(render_env_help())
    print(init_env_help())
    return 0


def cmd_config_dump(args) -> int:
    from .manager.main import _plain

    path = _config_path(args)
    try:
        if path:
            with open(path, "rb") as f:
                config = load_text(f.read(), os.environ, source=path)
        else:
            config = load_default(os.environ)
    except (OSError, ConfigError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(_plain(config), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastproxy", description="A transparent service-mesh sidecar proxy.")
    p.add_argument("--version", action="version", version=f"fastproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the sidecar (manager + workers)")
    run.add_argument("--config", "-c", help=f"YAML or JSON config file (default: ${CONFIG_FILE_VAR}, else embedded)")
    run.set_defaults(func=cmd_run)
    add_init_parser(sub)
    add_explain_parser(sub)
    add_status_parser(sub)
    add_inject_parsers(sub)
    cfg = sub.add_parser("config", help="check, list or dump configuration")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)
    env = csub.add_parser("env", help="list every FASTPROXY_* variable with its default and meaning")
    env.set_defaults(func=cmd_config_env)
    dump = csub.add_parser("dump", help="print the effective config (file + environment) as JSON")
    dump.add_argument("--config", "-c")
    dump.set_defaults(func=cmd_config_dump)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    role = "manager" if args.command == "run" else args.command
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s fastproxy {role} %(levelname)s %(message)s")
    return args.func(args)
