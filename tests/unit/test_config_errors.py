"""Config errors say what to fix: the file, the line, the key path, what was expected and
what was given, the nearest known key, the environment variable the value came from; one
line per error, no pydantic text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.core.config import ConfigError, Settings, load_settings
from service.core.config_errors import Origins, expected, target
from service.core.toml_lines import TomlLines


@pytest.fixture(autouse=True)
def no_aemon_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' own variables only."""
    for name in [n for n in os.environ if n.upper().startswith("AEMON_")]:
        monkeypatch.delenv(name)


def problems(path: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "pydantic" not in message
    assert "validation error" not in message
    assert message.splitlines() == list(caught.value.problems)
    return list(caught.value.problems)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aemon.toml"
    path.write_text(text)
    return path


def test_an_unknown_key_names_its_line_and_the_nearest_known_key(tmp_path: Path) -> None:
    f = write(tmp_path, '# site config\n[mqtt]\nhost = "broker"\nprot = 1884\n')
    assert problems(f) == [f"{f}:4: mqtt.prot: unknown key; did you mean port?"]


def test_an_unknown_section_and_a_key_far_from_any(tmp_path: Path) -> None:
    f = write(tmp_path, '[modle]\nkind = "conv"\n[alert]\nzzz = 1\n')
    found = problems(f)
    assert found[0] == f"{f}:1: modle: unknown section; did you mean model?"
    assert found[1].startswith(f"{f}:4: alert.zzz: unknown key (known: k, n, m, ")


def test_a_wrong_type_says_what_was_expected_and_given_and_where(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        '[mqtt]\nhost = "broker"\nport = "1883x"\n\n[finetune]\nenabled = "maybe"\n'
        '[log]\nlevel = "warn"\n',
    )
    assert problems(f) == [
        f'{f}:3: mqtt.port: expected an integer from 1 to 65535, given "1883x"',
        f'{f}:6: finetune.enabled: expected true or false, given "maybe"',
        f'{f}:8: log.level: expected "debug", "info", "warning" or "error", given "warn"; '
        'did you mean "warning"?',
    ]


def test_nested_tables_arrays_of_tables_and_missing_keys(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "[machines.pump-1]\n"
        'sensors = ["current", "pressure"]\n'
        "period = -1\n"
        "[[maintenance]]\n"
        'start = "06:00"\n'
        "hours = 2\n"
        "[[maintenance]]\n"
        'start = "25:00"\n'
        "hours = 1\n"
        "[machines.pump-2]\n"
        "period = 1.0\n",
    )
    assert problems(f) == [
        f"{f}:3: machines.pump-1.period: expected a number > 0, given -1",
        f"{f}:8: maintenance[1].start: expected a string matching ^([01]\\d|2[0-3]):[0-5]\\d$, "
        'given "25:00" (Start, HH:MM UTC.)',
        f"{f}:10: machines.pump-2.sensors: required, not given: expected a list of strings "
        "(The machine's sensors, in model order.)",
    ]


def test_a_check_across_keys_names_its_table(tmp_path: Path) -> None:
    f = write(tmp_path, "\n[alert]\nk = 6\nn = 5\n")
    assert problems(f) == [f"{f}:2: alert: alert.k must not exceed alert.n"]


def test_a_value_from_the_environment_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path, "[mqtt]\nport = 1883\nkeepalive = 0\n")
    monkeypatch.setenv("AEMON_MQTT__PORT", "70000")
    assert problems(f) == [
        f"{f}:3: mqtt.keepalive: expected an integer >= 5, given 0",
        "AEMON_MQTT__PORT (environment): mqtt.port: expected an integer from 1 to 65535, "
        'given "70000"',
    ]


def test_a_misspelt_variable_is_said_to_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path, '[mqtt]\nhost = "broker"\n')
    monkeypatch.setenv("AEMON_MQTT__HOTS", "other")
    assert problems(f) == [
        "AEMON_MQTT__HOTS (environment): mqtt.hots: unknown setting; did you mean AEMON_MQTT__HOST?"
    ]


def test_a_variable_that_is_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEMON_MQTT__TOPICS", '["plant/{machine}"')
    (line,) = problems()
    assert line.startswith(
        "AEMON_MQTT__TOPICS (environment): mqtt.topics: expected a list of strings as JSON, "
        'given "[\\"plant/{machine}\\""'
    )


def test_toml_syntax_and_unreadable_files(tmp_path: Path) -> None:
    f = write(tmp_path, "[mqtt]\nport = \n")
    (line,) = problems(f)
    assert line.startswith(f"{f}:2:8: not valid TOML: ")
    assert problems(tmp_path / "missing.toml") == [
        f"config file {tmp_path / 'missing.toml'} does not exist"
    ]


def test_toml_lines_finds_keys_in_every_form() -> None:
    text = (
        'title = "x"  # [not.a.table]\n'
        "[ mqtt ]\n"
        'topics = [\n  "a = b",\n  "[c]",\n]\n'
        'notes = """\nport = 1\n"""\n'
        "port = 1\n"
        '[machines."pump 1"]\n'
        "running = {sensor = 'a', above = 1}\n"
        "[[maintenance]]\n[[maintenance]]\n"
        "start.x = 1\n"
    )
    lines = TomlLines(text)
    assert lines.line(("title",)) == 1
    assert lines.line(("mqtt", "topics", 1)) == 3
    assert lines.line(("mqtt", "port")) == 10
    assert lines.line(("machines", "pump 1", "running", "above")) == 12
    assert lines.line(("maintenance", 1, "start", "x")) == 15
    assert lines.line(("maintenance", 0, "hours")) == 13
    assert lines.line(("nowhere",)) is None


def test_targets_and_what_they_expect() -> None:
    aim = target(Settings, ("model", "params", "channels", "int"))  # a union member's tag
    assert aim.path == ("model", "params", "channels")
    assert expected(aim.annotation) == "a number"
    aim = target(Settings, ("mqtt", "topics", 0))
    assert expected(aim.annotation) == "a string"
    aim = target(Settings, ("mqtt", "qos"))
    assert expected(aim.annotation, aim.field) == "0 or 1"
    assert Origins(Settings, None).env_name(("machines", "p1", "sensors")) == (
        "AEMON_MACHINES__P1__SENSORS"
    )


def test_a_table_from_the_environment_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path, "[model]\nepochs = 3\n")
    monkeypatch.setenv("AEMON_MODEL__PARAMS", '{"channels": "wide"}')
    assert problems(f) == [
        'AEMON_MODEL__PARAMS (environment): model.params.channels: expected a number, given "wide"'
    ]
