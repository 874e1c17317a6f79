"""The manual's install steps for systemd and for the Prometheus rules (docs/deployment.md),
followed literally into a scratch root: every command of their `sh` blocks is run (absolute
paths moved under the root) or is on a short list of steps that need PID 1, an editor or a
package index, each with the reason. A new step in the manual fails here until it is run or
listed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import find_binary

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO / "docs" / "deployment.md"
INSTALLED_AEMON = "/opt/aemon/.venv/bin/aemon"

# First word (or words) of a command -> why the test cannot run it here.
NOT_RUN = {
    "python3 -m venv": "a virtualenv with torch: `make install` builds it from constraints.txt",
    "/opt/aemon/.venv/bin/pip install": "needs PyTorch's package index",
    "$EDITOR": "a person edits the config",
    "systemctl": "needs systemd as PID 1",
    "journalctl": "needs systemd as PID 1",
    "curl": "the endpoints of a running daemon are checked by tests/integration",
}


def sh_block(section: str) -> list[str]:
    """The commands of the first ```sh block under `## {section}`, continuations joined and
    comments dropped."""
    text = DEPLOYMENT.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", body, re.S)
    assert match, f"no sh block under {section!r}"
    joined = match.group(1).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        command = line.split(" #", 1)[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


def rooted(command: str, root: Path) -> list[str]:
    """The command's words with absolute paths moved under `root`, and the installed aemon
    replaced by this checkout's."""
    words = shlex.split(command)
    if words[0] == INSTALLED_AEMON:
        words[0] = str(Path(sys.executable).with_name("aemon"))
    return [
        str(root) + w if i and w.startswith("/") and not w.startswith(str(root)) else w
        for i, w in enumerate(words)
    ]


def run(command: str, root: Path) -> subprocess.CompletedProcess[str]:
    words = rooted(command, root)
    if words[0] in ("promtool", "systemd-analyze"):
        words[0] = find_binary(words[0])
    return subprocess.run(words, check=False, cwd=REPO, capture_output=True, text=True, timeout=120)


def follow(section: str, root: Path) -> list[str]:
    """Runs the section's commands in order; returns those not run."""
    skipped = []
    for command in sh_block(section):
        if not_run(command):
            skipped.append(command)
            continue
        result = run(command, root)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    return skipped


def test_systemd_install_steps(tmp_path: Path) -> None:
    (tmp_path / "etc/systemd/system").mkdir(parents=True)  # there on any systemd host
    skipped = follow("Install as a systemd service", tmp_path)

    assert {next(s for s in NOT_RUN if c.startswith(s)) for c in skipped} == set(NOT_RUN)
    unit = tmp_path / "etc/systemd/system/aemon.service"
    assert unit.read_text() == (REPO / "deploy/systemd/aemon.service").read_text()
    assert (tmp_path / "etc/aemon/aemon.env").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "opt/aemon/service/app.py").exists()
    # What `systemctl enable --now` would load: the installed unit, with ExecStart on an
    # executable that exists here (verify checks that it does).
    probe = tmp_path / "aemon-probe.service"
    probe.write_text(
        unit.read_text().replace(f"ExecStart={INSTALLED_AEMON} ", f"ExecStart={sys.executable} ")
    )
    verify = run(f"systemd-analyze verify {probe}", tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert not (verify.stdout + verify.stderr).strip()


def test_prometheus_rules_install_steps(tmp_path: Path) -> None:
    etc = tmp_path / "etc/prometheus"
    etc.mkdir(parents=True)
    # The step the manual leaves to a person: merge the example's `aemon` job and rule file
    # into the host's prometheus.yml (Debian's default when present).
    host = Path("/etc/prometheus/prometheus.yml")
    config = (yaml.safe_load(host.read_text()) if host.exists() else None) or {}
    example = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    config["rule_files"] = [*(config.get("rule_files") or []), *example["rule_files"]]
    config["scrape_configs"] = [*(config.get("scrape_configs") or []), *example["scrape_configs"]]
    (etc / "prometheus.yml").write_text(yaml.safe_dump(config))

    skipped = follow("Prometheus alert rules", tmp_path)

    assert skipped == ["systemctl reload prometheus"]
    assert (etc / "aemon-rules.yml").read_text() == (
        REPO / "deploy/prometheus/aemon-rules.yml"
    ).read_text()


@pytest.mark.parametrize("section", ["Install as a systemd service", "Prometheus alert rules"])
def test_every_step_is_run_or_explained(section: str) -> None:
    for command in sh_block(section):
        program = shlex.split(command)[0]
        assert not_run(command) or program in (
            "install",
            "cp",
            "promtool",
            INSTALLED_AEMON,
        ), f"docs/deployment.md step the test neither runs nor explains: {command}"
