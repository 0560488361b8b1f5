"""Config templates in bench/configs/, filled with `${name}` placeholders."""

from __future__ import annotations

import os
import string

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def path(name: str) -> str:
    return os.path.join(CONFIG_DIR, name)


def render(name: str, **values: object) -> str:
    """The template bench/configs/<name> with every placeholder filled (a missing one raises)."""
    with open(path(name)) as f:
        return string.Template(f.read()).substitute({k: str(v) for k, v in values.items()})


def write(directory: str, filename: str, text: str) -> str:
    """Write text to directory/filename and return the path."""
    os.makedirs(directory, exist_ok=True)
    out = os.path.join(directory, filename)
    with open(out, "w") as f:
        f.write(text)
    return out
