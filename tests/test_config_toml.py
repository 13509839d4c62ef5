"""``config.toml`` shows every key of every config struct with its default and a one-line comment.

The structs are walked with ``msgspec.structs.fields`` from :class:`barsignal.daemon.config.Config`
down, so a key added to a section without its line in ``config.toml`` fails here, and so does a line
whose value differs from the struct's default. A key whose default is unset (``None``) cannot be
written in TOML: it must be shown commented out (``# long_threshold =``) in its section.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from barsignal.daemon import config as cfgmod

REPO = Path(__file__).resolve().parents[1]
CONFIG_TOML = REPO / "config.toml"
_HEADER = re.compile(r"^\[([A-Za-z0-9_.]+)\]\s*(#.*)?$")
_KEY = re.compile(r"^(#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


def _default(f: Any) -> Any:
    if f.default is not msgspec.NODEFAULT:
        return f.default
    if f.default_factory is not msgspec.NODEFAULT:
        return f.default_factory()
    raise AssertionError(f"config key {f.name} has no default: every key must be optional")


def struct_keys(t: type | None = None, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str, Any]]:
    """``(section, key, default)`` for every key of every section under ``t``; a nested struct is a
    section of its own (``sinks.jsonl``), and a table-valued key (``[model.symbols]``) is a key whose
    default is a dict."""
    for f in msgspec.structs.fields(t or cfgmod.Config):
        d = _default(f)
        if isinstance(d, msgspec.Struct):
            yield from struct_keys(type(d), (*path, f.name))
        else:
            yield ".".join(path), f.name, d


def _trailing_comment(rest: str) -> bool:
    """Whether the text after ``=`` holds a ``#`` comment outside a string."""
    quote = None
    for ch in rest:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return True
    return False


def shown_lines(text: str) -> dict[tuple[str, str], tuple[bool, bool]]:
    """``(section, key) -> (commented out, has a comment)`` for every ``key =`` line of the file; a key
    line has a comment when it ends in one or the line above it is a comment."""
    out: dict[tuple[str, str], tuple[bool, bool]] = {}
    section, prev = "", ""
    for raw in text.splitlines():
        line = raw.strip()
        h = _HEADER.match(line)
        if h:
            section = h.group(1)
        else:
            k = _KEY.match(line)
            if k:
                above = prev.startswith("#") and not _KEY.match(prev)
                out.setdefault((section, k.group(2)), (bool(k.group(1)), above or _trailing_comment(k.group(3))))
        prev = line
    return out


def missing_or_wrong(text: str) -> list[str]:
    """What ``text`` (a config.toml) fails to show: one line per key, empty when complete."""
    doc = tomllib.loads(text)
    lines = shown_lines(text)
    bad: list[str] = []
    for section, key, default in struct_keys():
        where = f"[{section}] {key}"
        table: Any = doc
        for part in section.split("."):
            table = table.get(part, {}) if isinstance(table, dict) else {}
        commented, commented_ok = lines.get((section, key), (False, False))
        if default is None:
            if (section, key) not in lines or not commented:
                bad.append(f"{where}: default unset; show it commented out (# {key} =) with a comment")
            elif not commented_ok:
                bad.append(f"{where}: no one-line comment")
            continue
        if isinstance(default, dict):  # a table of its own: [section.key], its default entries
            if key not in table:
                bad.append(f"{where}: missing; show it as an empty [{section}.{key}] table with a comment")
            elif table[key] != default:
                bad.append(f"{where}: shows {table[key]!r}, the default is {default!r}")
            continue
        if key not in table or commented:
            bad.append(f"{where}: missing; add `{key} = {msgspec.json.encode(default).decode()}` with a comment")
            continue
        want = msgspec.json.decode(msgspec.json.encode(default))  # as TOML writes it: a tuple is an array
        if table[key] != want:
            bad.append(f"{where}: shows {table[key]!r}, the default is {want!r}")
        if not commented_ok:
            bad.append(f"{where}: no one-line comment (at the end of its line, or on the line above)")
    return bad


def test_config_toml_shows_every_key_with_its_default_and_a_comment() -> None:
    bad = missing_or_wrong(CONFIG_TOML.read_text(encoding="utf-8"))
    assert not bad, "config.toml is not complete:\n" + "\n".join(bad)


def test_config_toml_is_the_defaults() -> None:
    # loaded through the daemon's own loader, the file is exactly the embedded defaults
    assert cfgmod.load(CONFIG_TOML) == cfgmod.Config()


def test_every_struct_key_is_walked() -> None:
    keys = {(s, k) for s, k, _ in struct_keys()}
    # the keys config.toml used to leave out are among them, and nested sections are walked
    for want in [("feed", "rest_timeout_s"), ("feed", "max_frame_bytes"), ("model", "symbols"),
                 ("engine", "engine_cache_dir"), ("sinks.jsonl", "fsync_interval_s"),
                 ("sinks.webhook", "allow_insecure_http"), ("sinks.redis", "password_env"),
                 ("paper", "notional"), ("metrics", "drift_psi_warn"), ("metrics", "monitor_window"),
                 ("signal", "long_threshold"), ("state", "dir")]:
        assert want in keys, want
    assert len(keys) == len(list(struct_keys())) >= 55


@pytest.mark.parametrize("edit, complaint", [
    (lambda t: t.replace("rest_timeout_s = 10.0", "# (removed)"), "[feed] rest_timeout_s: missing"),
    (lambda t: t.replace("monitor_window = 1440", "monitor_window = 720"),
     "[metrics] monitor_window: shows 720, the default is 1440"),
    (lambda t: t.replace("[model.symbols]\n", ""), "[model] symbols: missing"),
    (lambda t: re.sub(r"# long_threshold =.*\n", "", t), "[signal] long_threshold: default unset"),
    (lambda t: re.sub(r"(notional = 1000\.0)\s+#.*", r"\1", t), "[paper] notional: no one-line comment"),
    (lambda t: t.replace("fsync_interval_s = 1.0", "# fsync_interval_s = 1.0"), "[sinks.jsonl] fsync_interval_s: "),
])
def test_an_incomplete_config_toml_is_caught(edit, complaint: str) -> None:
    text = CONFIG_TOML.read_text(encoding="utf-8")
    edited = edit(text)
    assert edited != text
    bad = missing_or_wrong(edited)
    assert any(b.startswith(complaint) for b in bad), bad


def test_a_new_struct_key_without_its_line_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # a section grows a key: the walk finds it and the check names it
    opts = {"frozen": True, "forbid_unknown_fields": True, "kw_only": True}
    metrics2 = msgspec.defstruct("MetricsConfig", [("scrape_timeout_s", float, 3.0)],
                                 bases=(cfgmod.MetricsConfig,), **opts)
    config2 = msgspec.defstruct("Config", [("metrics", metrics2, msgspec.field(default_factory=metrics2))],
                                bases=(cfgmod.Config,), **opts)

    monkeypatch.setattr(cfgmod, "Config", config2)
    bad = missing_or_wrong(CONFIG_TOML.read_text(encoding="utf-8"))
    assert bad == ["[metrics] scrape_timeout_s: missing; add `scrape_timeout_s = 3.0` with a comment"]
