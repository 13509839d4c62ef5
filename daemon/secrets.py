"""Secrets come from systemd credentials or the environment, never from the config file.

``read_secret("BARSIGNAL_WEBHOOK_TOKEN")`` looks for ``$CREDENTIALS_DIRECTORY/<name>``
(systemd ``LoadCredential=``) first, then the environment variable of that name.
Values are wrapped in ``Secret`` so that a repr or a log line never shows them.
"""

from __future__ import annotations

import os
from pathlib import Path


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def read_secret(name: str) -> Secret | None:
    """The secret called ``name`` from a systemd credential or the environment, else None."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and name:
        p = Path(cred_dir) / name
        if p.is_file():
            return Secret(p.read_text(encoding="utf-8").strip())
    value = os.environ.get(name) if name else None
    return Secret(value) if value else None
