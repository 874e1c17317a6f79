from __future__ import annotations

from pathlib import Path

import pytest

from service.core.config import ConfigError, load_settings


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AEMON_CONFIG", raising=False)
    s = load_settings()
    assert (s.mqtt.host, s.mqtt.port, s.http.port) == ("127.0.0.1", 1883, 9108)
    assert s.mqtt.topics == ("plant/{machine}/{sensor}", "plant/{machine}")
    assert s.state.dir == Path("/var/lib/aemon")


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[mqtt]\nport = 1999\nhost = "broker"\n[machines.p1]\nsensors = ["a", "b"]\n')
    monkeypatch.setenv("AEMON_MQTT__PORT", "2000")
    monkeypatch.setenv("AEMON_CONFIG", str(f))
    s = load_settings()
    assert (s.mqtt.host, s.mqtt.port) == ("broker", 2000)
    assert s.machines["p1"].sensors == ("a", "b")


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text("[mqtt]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"mqtt\.prot: unknown key"):
        load_settings(f)
    f.write_text("[alert]\nk = 6\nn = 5\n")
    with pytest.raises(ConfigError, match=r"alert\.k must not exceed alert\.n"):
        load_settings(f)
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "missing.toml")


def test_password_file_wins_and_is_secret(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    f = tmp_path / "a.toml"
    f.write_text(f'[mqtt]\npassword = "other"\npassword_file = "{secret}"\n')
    s = load_settings(f)
    assert s.mqtt.resolved_password() == "s3cret"
    assert "other" not in repr(s)
