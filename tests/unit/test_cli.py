"""The CLI: `--config` before or after a subcommand, `models` saying when there is nothing,
`check-config` (and `run`) refusing what the daemon could not start with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service import cli, preflight
from service.cli import main


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No `AEMON_*` variable of the machine; structlog left as the tests set it."""
    for name in [n for n in os.environ if n.upper().startswith("AEMON_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)


def config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "aemon.toml"
    path.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n{text}')
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{c}", "models", "list"],
        ["models", "--config", "{c}", "list"],
        ["models", "list", "--config", "{c}"],
    ],
)
def test_config_before_or_after_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    c = config(tmp_path)
    assert main([a.format(c=c) for a in argv]) == 0
    assert capsys.readouterr().err == f"aemon: no models in {tmp_path / 'state' / 'models'}\n"


def test_the_last_config_given_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = config(tmp_path)
    assert (
        main(["--config", str(tmp_path / "nowhere.toml"), "models", "list", "--config", str(c)])
        == 0
    )
    assert main(["--config", str(c), "check-config"]) == 0
    assert '"dir": "' in capsys.readouterr().out


def test_rollback_of_an_unknown_machine_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = config(tmp_path)
    assert main(["models", "rollback", "nosuch", "--config", str(c)]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"aemon: unknown machine nosuch: no model versions in {tmp_path / 'state' / 'models'}\n"
    )


def test_check_config_refuses_an_unknown_model_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = config(tmp_path, '[model]\nkind = "transformer"\n')
    assert main(["check-config", str(c)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f'aemon: invalid configuration: {c}:4: model.kind: unknown model kind "transformer" '
        "(known: conv, dense, lstm, vae)\n"
    )
    c.write_text(c.read_text().replace("transformer", "vea"))
    assert main(["check-config", str(c)]) == 2
    assert "did you mean vae?" in capsys.readouterr().err


def test_check_config_refuses_an_unreadable_password_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "secrets" / "mqtt-password"
    c = config(tmp_path, f'[mqtt]\nusername = "aemon"\npassword_file = "{missing}"\n')
    assert main(["check-config", str(c)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"aemon: invalid configuration: {c}:5: mqtt.password_file: cannot read {missing}: "
        "No such file or directory\n"
    )


def test_check_config_refuses_an_unwritable_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path under a regular file: unwritable even for root, who may write anywhere else."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    c = tmp_path / "aemon.toml"
    c.write_text(f'[state]\ndir = "{blocker / "state"}"\n')
    assert main(["check-config", str(c)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"aemon: invalid configuration: {c}:2: state.dir: cannot create {blocker / 'state'}: "
        f"{blocker} is not a directory\n"
    )


def test_check_config_lists_every_problem_and_run_refuses_them_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    c = config(
        tmp_path,
        '[model]\nkind = "conv"\nparams = {chanels = 8}\n'
        f'[http]\ncommand_token_file = "{token}"\n'
        '[mqtt]\ntopics = ["plant/{machine}-x", "plant/+/{machine}"]\n',
    )
    token.write_text("  \n")
    assert main(["check-config", str(c)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "aemon: invalid configuration (4 problems):",
        f"  {c}:5: model.params.chanels: model conv has no parameter chanels; "
        "did you mean channels?",
        f"  {c}:7: http.command_token_file: {token} is empty: it must hold the token that "
        "commands send",
        f'  {c}:9: mqtt.topics[0]: "plant/{{machine}}-x": "{{machine}}-x": a field must be a '
        "whole topic level",
        f'  {c}:9: mqtt.topics[1]: "plant/+/{{machine}}": has an MQTT wildcard (+ or #): '
        "{machine} and {sensor} are the wildcards",
    ]
    monkeypatch.setenv("AEMON_CONFIG", str(c))
    assert main(["run"]) == 2  # before the daemon is built
    assert capsys.readouterr().err.splitlines() == err


def test_invalid_settings_are_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = config(tmp_path, "[mqtt]\nprot = 1\n")
    monkeypatch.setenv("AEMON_MQTT_PORT", "1884")
    assert main(["models", "list", "--config", str(c)]) == 2
    assert capsys.readouterr().err == (
        f"aemon: invalid configuration: {c}:4: mqtt.prot: unknown key; did you mean port?\n"
    )
    c = config(tmp_path)
    assert main(["check-config", str(c)]) == 0
    assert capsys.readouterr().err == (
        "aemon: warning: AEMON_MQTT_PORT (environment): not a setting, ignored; "
        "did you mean AEMON_MQTT__PORT?\n"
    )


def test_a_state_dir_this_user_cannot_create_stops_run_but_not_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config may be run by an administrator before the service manager creates the
    directory for the daemon's user; `run` is that user. (os.access stands in for
    permissions: root may write anywhere.)"""
    state = tmp_path / "var" / "aemon"
    c = tmp_path / "aemon.toml"
    c.write_text(f'[state]\ndir = "{state}"\n')
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: False)
    assert main(["check-config", str(c)]) == 0
    problem = f"{c}:2: state.dir: cannot create {state}: {tmp_path} is not writable by this user"
    assert capsys.readouterr().err == f"aemon: warning: {problem}\n"
    assert main(["run", "--config", str(c)]) == 2
    assert capsys.readouterr().err == f"aemon: invalid configuration: {problem}\n"
    state.mkdir(parents=True)  # there, but not writable: a problem for both
    assert main(["check-config", str(c)]) == 2
    assert capsys.readouterr().err == (
        f"aemon: invalid configuration: {c}:2: state.dir: {state} is not a writable directory\n"
    )
