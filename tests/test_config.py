"""Typed, frozen config: unknown keys, wrong types and out-of-range values fail at start naming the
file, section, key and what is allowed; secrets come from the environment or systemd credentials."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from barsignal.daemon import config as cfg
from barsignal.daemon.secrets import Secret, read_secret
from barsignal.errors import ConfigError
from tests.conftest import REPO, run_cli


def write(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    p.chmod(0o644)
    return p


def test_misspelled_key_exits_2_naming_the_key(tmp_path: Path) -> None:
    p = write(tmp_path, '[feed]\nsymbolz = ["BTCUSDT"]\n')
    proc = run_cli("run", "--config", str(p))
    assert proc.returncode == 2
    assert "bad.toml" in proc.stderr and "[feed]" in proc.stderr and "'symbolz'" in proc.stderr
    assert "allowed keys: symbols," in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("text", "section", "key", "allowed"), [
    ("[engine]\nintra_op_threads = \"4\"\n", "[engine]", "'intra_op_threads'", "Expected `int`, got `str`"),
    ("[paper]\nfee_bps = -1.0\n", "[paper]", "'fee_bps'", ">= 0.0"),
    ("[sinks.webhook]\nretries = 99\n", "[sinks.webhook]", "'retries'", "<= 20"),
    ("[signal]\nhysteresis = 0.7\n", "[signal]", "'hysteresis'", "<= 0.5"),
    ("[metrics]\nport = 70000\n", "[metrics]", "'port'", "<= 65535"),
    ("[engine]\nbackend = \"cuda\"\n", "[engine]", "'backend'", "'auto', 'onnxruntime', 'tensorrt', 'torch'"),
    ("[sinks.jsonl]\nfsnc = \"always\"\n", "[sinks.jsonl]", "'fsnc'", "path, fsync, fsync_interval_s"),
    ("nonsense = 1\n", "[(top level)]", "'nonsense'", "feed, features, model"),
    ("[feed\n", "", "", "not valid TOML"),
    # a check of a whole section names the section once, not as a key of the top level
    ("[feed]\nreconnect_min_s = 5.0\nreconnect_max_s = 1.0\n", ": [feed] reconnect_max_s", "below", "make"),
])
def test_bad_values_name_section_key_and_allowed(tmp_path: Path, text: str, section: str, key: str,
                                                 allowed: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        cfg.load(p)
    msg = str(err.value)
    assert str(p) in msg and section in msg and key in msg and allowed in msg
    assert "key 'feed'" not in msg and "[feed] [feed]" not in msg
    assert err.value.exit_code == 2


def test_defaults_and_shipped_config_load(tmp_path: Path) -> None:
    d = cfg.load(None)
    assert d == cfg.loads("") == cfg.Config()
    assert d.feed.symbols == ("BTCUSDT",) and d.engine.backend == "auto" and d.paper.fee_bps == 10.0
    shipped = cfg.load(REPO / "config.toml")
    assert isinstance(shipped, cfg.Config)
    # every key the shipped file sets is a real key (the loader would have refused it otherwise),
    # and a partial file keeps the other defaults
    p = write(tmp_path, "[paper]\nfee_bps = 7.5\n", "ok.toml")
    c = cfg.load(p)
    assert c.paper.fee_bps == 7.5 and c.paper.slippage_bps == d.paper.slippage_bps and c.feed == d.feed


def test_config_is_frozen() -> None:
    c = cfg.Config()
    with pytest.raises(AttributeError):
        c.feed = cfg.FeedConfig()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        c.paper.fee_bps = 0.0  # type: ignore[misc]
    changed = msgspec.structs.replace(c.paper, fee_bps=1.0)
    assert changed.fee_bps == 1.0 and c.paper.fee_bps == 10.0


def test_missing_file_and_world_writable_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        cfg.load(tmp_path / "absent.toml")
    d = tmp_path / "open"
    d.mkdir()
    p = write(d, "[paper]\nfee_bps = 1.0\n", "c.toml")
    d.chmod(0o777)
    try:
        with pytest.raises(ConfigError, match="world-writable"):
            cfg.load(p)
    finally:
        d.chmod(0o755)


def test_secrets_never_in_the_file_and_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a token written into the file is an unknown key, and the error does not echo its value
    p = write(tmp_path, '[sinks.webhook]\ntoken = "s3cr3t-value"\n')
    proc = run_cli("run", "--config", str(p))
    assert proc.returncode == 2 and "'token'" in proc.stderr and "s3cr3t-value" not in proc.stderr
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("BARSIGNAL_WEBHOOK_TOKEN", "from-env-123")
    s = read_secret(cfg.Config().sinks.webhook.token_env)
    assert isinstance(s, Secret) and s.reveal() == "from-env-123"
    assert "from-env-123" not in repr(s) and "from-env-123" not in str(s) and "from-env-123" not in f"{s}"
    assert "from-env-123" not in repr({"token": s})
    # a systemd credential wins over the environment
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "BARSIGNAL_WEBHOOK_TOKEN").write_text("from-cred-456\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = read_secret("BARSIGNAL_WEBHOOK_TOKEN")
    assert s is not None and s.reveal() == "from-cred-456" and "from-cred-456" not in repr(s)
    monkeypatch.delenv("BARSIGNAL_WEBHOOK_TOKEN")
    assert read_secret("BARSIGNAL_REDIS_PASSWORD") is None and read_secret("") is None


def test_the_state_dir_is_outside_the_checkout_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cfg.state_dir(cfg.StateConfig()) == tmp_path / "home" / ".local" / "state" / "barsignal"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert cfg.state_dir(cfg.StateConfig()) == tmp_path / "xdg" / "barsignal"
    assert cfg.state_dir(cfg.StateConfig(dir="~/bs")) == tmp_path / "home" / "bs"
    assert cfg.state_dir(cfg.StateConfig(dir=str(tmp_path / "s"))) == tmp_path / "s"
    # systemd's StateDirectory= wins over the file, as the unit relies on
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "sd"))
    assert cfg.state_dir(cfg.StateConfig(dir=str(tmp_path / "s"))) == tmp_path / "sd"


def test_a_relative_state_dir_exits_2_before_anything_is_made(tmp_path: Path) -> None:
    p = write(tmp_path, '[state]\ndir = "state"\n[metrics]\nenabled = false\n')
    proc = run_cli("run", "--config", str(p))
    assert proc.returncode == 2, proc.stderr
    assert f"{p}: [state] dir = 'state' is relative" in proc.stderr and "absolute path" in proc.stderr
    assert "~/.local/state/barsignal" in proc.stderr and "Traceback" not in proc.stderr
    assert not (REPO / "state").exists() and not (tmp_path / "state").exists()


def test_start_errors_from_the_file_name_the_file_and_the_key(tmp_path: Path) -> None:
    state = tmp_path / "st"
    sink = write(tmp_path, f'[sinks]\nenabled = ["stdout", "nope"]\n[state]\ndir = "{state}"\n', "sink.toml")
    proc = run_cli("run", "--config", str(sink))
    assert proc.returncode == 2
    assert f"{sink}: [sinks] enabled: unknown sink 'nope'; known sinks:" in proc.stderr, proc.stderr
    art = write(tmp_path, f'[model]\nartifact = "{tmp_path / "gone"}"\n[state]\ndir = "{state}"\n', "art.toml")
    proc = run_cli("run", "--config", str(art))
    assert proc.returncode == 2
    assert f"{art}: [model] artifact = '{tmp_path / 'gone'}': artifact directory" in proc.stderr, proc.stderr
    assert "does not exist" in proc.stderr and "pass --artifact" not in proc.stderr
    # the flag names itself, not the file
    proc = run_cli("run", "--config", str(art), "--artifact", str(tmp_path / "gone2"))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"barsignal run: --artifact '{tmp_path / 'gone2'}': artifact directory"), proc.stderr
    assert not state.exists()
