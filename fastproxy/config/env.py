"""FASTPROXY_* environment variables: named once, parsed in one function.

Every Setting in schema.SETTINGS is FASTPROXY_<NAME>; FASTPROXY_CONFIG names
the config file. `fastproxy config env` prints render_env_help().
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .schema import SETTINGS, ConfigError, Setting

PREFIX = "FASTPROXY_"
CONFIG_FILE_VAR = "FASTPROXY_CONFIG"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_name(setting: Setting) -> str:
    return PREFIX + setting.name.upper()


def coerce(setting: Setting, value: Any, path: str) -> Any:
    """Checks and converts one setting's value (from a file or the environment)."""
    t = setting.type
    if t is bool:
        if isinstance(value, bool):
            out: Any = value
        elif isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            out = value.strip().lower() in _TRUE
        else:
            raise ConfigError(path, f"expected a boolean, got {value!r}")
    elif t is int:
        if isinstance(value, bool):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        try:
            out = int(value.strip()) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(path, f"expected an integer, got {value!r}") from None
        if not isinstance(out, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
    elif t is float:
        if isinstance(value, bool):
            raise ConfigError(path, f"expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(path, f"expected a number, got {value!r}") from None
    else:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        out = value.strip()
    if setting.choices:
        if isinstance(out, str) and out.upper() in setting.choices:
            out = out.upper()
        elif isinstance(out, str) and out.lower() in setting.choices:
            out = out.lower()
        else:
            raise ConfigError(path, f"expected one of {', '.join(setting.choices)}, got {value!r}")
    if setting.minimum is not None and out < setting.minimum:
        raise ConfigError(path, f"must be >= {setting.minimum}, got {out}")
    if setting.maximum is not None and out > setting.maximum:
        raise ConfigError(path, f"must be <= {setting.maximum}, got {out}")
    if setting.check is not None:
        setting.check(out, path)
    return out


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings given in the environment, validated; errors name the variable."""
    out = {}
    for s in SETTINGS:
        name = env_name(s)
        if name in environ:
            out[s.name] = coerce(s, environ[name], name)
    return out


def render_env_help() -> str:
    lines = [f"{CONFIG_FILE_VAR}\n    default: (none: the embedded default config)\n    Path of the YAML or JSON config file.\n"]
    for s in SETTINGS:
        default = "(auto)" if s.default is None else str(s.default).lower() if s.type is bool else s.default
        extra = f" One of: {', '.join(s.choices)}." if s.choices else ""
        lines.append(f"{env_name(s)}\n    default: {default}\n    {s.doc}{extra}\n")
    return "\n".join(lines)
