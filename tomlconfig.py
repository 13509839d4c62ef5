"""TOML files decoded into typed, frozen ``msgspec.Struct`` configs, with errors an operator can act on.

Used by ``config.toml`` (``barsignal.daemon.config``) and ``compression.toml``
(``barsignal.compression.config``). An error names the file, the section, the key and what is
allowed.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
import types
import typing
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from barsignal.errors import ConfigError

T = TypeVar("T")

_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]+)`(?: - at `(?P<path>[^`]+)`)?")
_AT = re.compile(r"^(?P<msg>.*?) - at `(?P<path>[^`]+)`$")


def _allowed(root: type, path: list[str]) -> list[str]:
    t: type = root
    for part in path:
        t = msgspec.structs.fields(t)[[f.name for f in msgspec.structs.fields(t)].index(part)].type
    return [f.name for f in msgspec.structs.fields(t)]


def _is_section(root: type, path: list[str]) -> bool:
    """Whether ``path`` names a table (a Struct) rather than a key."""
    try:
        _allowed(root, path)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def _choices(root: type, path: list[str]) -> tuple[object, ...]:
    """The allowed values of a Literal-typed key (also inside Optional/Annotated), else ()."""
    t: object = root
    try:
        for part in path:
            if "[" in part:  # an element of a tuple: no fixed choices
                return ()
            t = {f.name: f.type for f in msgspec.structs.fields(t)}[part]  # type: ignore[arg-type]
    except (KeyError, TypeError):
        return ()
    pending, out = [t], []
    while pending:
        x = pending.pop()
        if typing.get_origin(x) is Literal:
            out.extend(typing.get_args(x))
        elif typing.get_origin(x) in (typing.Union, types.UnionType, typing.Annotated):
            pending.extend(typing.get_args(x)[:1] if typing.get_origin(x) is typing.Annotated
                           else typing.get_args(x))
    return tuple(out)


def _explain(exc: msgspec.ValidationError, source: str, root: type) -> str:
    text = str(exc)
    m = _UNKNOWN.match(text)
    if m:
        parts = [p for p in (m["path"] or "$").split(".")[1:]]
        section = ".".join(parts) or "(top level)"
        try:
            allowed = ", ".join(_allowed(root, parts))
        except (ValueError, AttributeError, TypeError):
            allowed = "see the example config"
        return f"{source}: [{section}] unknown key {m['key']!r}; allowed keys: {allowed}"
    m = _AT.match(text)
    if m:
        parts = m["path"].split(".")[1:]
        if parts and _is_section(root, parts):  # a check of the section as a whole (__post_init__)
            head = f"[{'.'.join(parts)}]"
            return f"{source}: {m['msg'] if m['msg'].startswith(head) else head + ' ' + m['msg']}"
        key = parts[-1] if parts else "?"
        section = ".".join(parts[:-1]) or "(top level)"
        msg = m["msg"]
        choices = _choices(root, parts)
        if choices:
            msg += f"; allowed: {', '.join(repr(c) for c in choices)}"
        return f"{source}: [{section}] key {key!r}: {msg}"
    return f"{source}: {text}"


def check_file_safe(path: Path) -> None:
    """Refuse a config reached through a world-writable file or directory (no symlink tricks)."""
    p = path.resolve()
    # The directories of the path as given count too: a symlink in a world-writable directory
    # could be swapped for one pointing elsewhere.
    given = Path(os.path.abspath(path)).parents
    for q in dict.fromkeys([p, *p.parents, *given]):
        try:
            st = q.stat()
        except OSError:
            continue
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if st.st_mode & stat.S_IWOTH and not (q != p and sticky):
            raise ConfigError(f"{path}: refusing config: {q} is world-writable; fix with chmod o-w {q}")


def decode(text: str, source: str, root: type[T]) -> T:
    """Parse TOML text into ``root``; errors name source, section, key and what is allowed."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return msgspec.convert(raw, type=root, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, source, root)) from None


def load_file(path: str | os.PathLike[str], root: type[T], what: str = "config file") -> T:
    """Read and decode one TOML file, refusing world-writable paths."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found; pass --config PATH to an existing TOML file")
    check_file_safe(p)
    return decode(p.read_text(encoding="utf-8"), str(p), root)
