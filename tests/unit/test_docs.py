"""The manual stays true to the code: every setting has a description and every metric a
help, both appear on the pages that docs/hooks/reference.py generates at build time, README
stays a front page, relative links in README.md and docs/ lead somewhere, and every alert
rule has its runbook section, which its runbook_url names. (`make docs` builds the manual
with `mkdocs build --strict`, which checks the links between pages and their anchors.)"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from service.core.config import AlertSettings, Settings
from service.core.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"
RULES = REPO / "deploy" / "prometheus" / "aemon-rules.yml"
README_MAX_LINES = 300


def _load_hook() -> ModuleType:
    path = DOCS / "hooks" / "reference.py"
    spec = importlib.util.spec_from_file_location("docs_reference_hook", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


hook = _load_hook()


def setting_keys() -> dict[str, str | None]:
    """Every setting's TOML key path -> its description, walked here independently of the
    generator: a section (its model's docstring, or the field's description) and its fields,
    a field that is a table of its own and its fields; a table of sections (machines) is
    keyed `<name>`, an array of tables (maintenance) `[]`."""
    keys: dict[str, str | None] = {}

    def model_of(annotation: Any) -> type[BaseModel] | None:
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                return candidate
        return None

    def walk(model: type[BaseModel], prefix: str) -> None:
        for field_name, leaf in model.model_fields.items():
            keys[f"{prefix}.{field_name}"] = leaf.description
            nested = model_of(leaf.annotation)
            if nested is not None:
                walk(nested, f"{prefix}.{field_name}")

    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        origin = getattr(annotation, "__origin__", None)
        if origin is dict:
            model, prefix = model_of(annotation.__args__[1]), f"{name}.<name>"  # type: ignore[union-attr]
        elif origin is tuple:
            model, prefix = model_of(annotation.__args__[0]), f"{name}[]"  # type: ignore[union-attr]
        else:
            model, prefix = model_of(annotation), name
        assert model is not None, name
        keys[name] = field.description or model.__doc__
        walk(model, prefix)
    return keys


def exposed_metric_names() -> list[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    suffix = {"counter": "_total", "info": "_info"}
    return [f.name + suffix.get(f.type, "") for f in registry.collect()]


# -- generated references -------------------------------------------------------------------


def test_every_setting_and_section_has_a_description() -> None:
    keys = setting_keys()
    assert "mqtt.host" in keys
    assert "machines.<name>.sensors" in keys
    missing = sorted(key for key, description in keys.items() if not (description or "").strip())
    assert not missing, (
        f"service/core/config.py: add Field(description=...) (a section: a docstring) to {missing}"
    )


def test_every_metric_has_help() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    families = list(registry.collect())
    assert len(families) > 20
    missing = [f.name for f in families if not f.documentation.strip()]
    assert not missing, f"metrics without help in service/core/metrics.py: {missing}"


def test_every_setting_is_on_the_configuration_page() -> None:
    page: str = hook.configuration_page()
    for key in setting_keys():
        if "." in key:
            assert f"`{key}`" in page, key
        else:
            assert f"## `[{key}" in page, key
    assert "`AEMON_MQTT__HOST`" in page
    assert "`AEMON_MACHINES__<NAME>__SENSORS`" in page


def test_the_configuration_page_gives_defaults_and_descriptions() -> None:
    rows = {s.key: s for section in hook.settings_sections() for s in section.settings}
    assert rows["mqtt.port"].default == "1883"
    assert rows["mqtt.port"].allowed == ">= 1, <= 65535"
    assert rows["mqtt.topics"].default == '["plant/{machine}/{sensor}", "plant/{machine}"]'
    assert rows["mqtt.password"].default == "unset"
    assert rows["machines.<name>.sensors"].default == "required"
    assert rows["state.dir"].env == "AEMON_STATE__DIR"
    page: str = hook.configuration_page()
    description = AlertSettings.model_fields["k"].description
    assert description
    assert description in page


def test_every_metric_is_on_the_metrics_page() -> None:
    page: str = hook.metrics_page()
    names = exposed_metric_names()
    assert "aemon_readings_rejected_total" in names
    assert "aemon_build_info" in names
    for name in names:
        assert f"`{name}`" in page, name
    # Labels come from the metrics themselves, including those without a sample yet.
    assert "| `aemon_readings_rejected_total` | counter | `machine`, `reason` |" in page


def test_the_hook_adds_both_pages_to_the_build() -> None:
    assert set(hook.GENERATED) == {"reference/configuration.md", "reference/metrics.md"}
    mkdocs = (REPO / "mkdocs.yml").read_text()
    assert "docs/hooks/reference.py" in mkdocs
    for page in hook.GENERATED:
        assert page in mkdocs, f"{page} is not in mkdocs.yml's nav"
        assert not (DOCS / page).exists(), f"docs/{page} is generated: do not commit it"


# -- README and links -----------------------------------------------------------------------


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    text = "\n".join(lines)
    # The two commands, as .ci/run and a new machine use them.
    assert "make demo   # installs what is missing" in text
    assert "make test   # lint (ruff, mypy --strict), unit, doctests and integration tests" in text


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(markdown: str) -> list[str]:
    """Targets of the inline links and images outside code, other than URLs and anchors in
    the same page."""
    text = re.sub(r"^(```|~~~).*?^\1", "", markdown, flags=re.S | re.M)  # fenced blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans
    return [
        target
        for target in LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")
    ]


def test_relative_links_are_found() -> None:
    assert relative_links("[a](b.md#c) `[x](y.md)` ![i](p.png) [u](https://e.org) [s](#t)") == [
        "b.md#c",
        "p.png",
    ]


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(path: Path) -> None:
    generated = {DOCS / page for page in hook.GENERATED}
    broken = []
    for target in relative_links(path.read_text()):
        file = (path.parent / target.split("#", 1)[0]).resolve()
        if not file.exists() and file not in generated:
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO)} links to missing files: {broken}"


def test_docs_has_the_pages_the_readme_promises() -> None:
    for page in ("quickstart", "detection", "contracts", "deployment", "evaluation"):
        assert (DOCS / f"{page}.md").exists(), page
    for page in ("performance", "performance-history", "runbook", "architecture"):
        assert (DOCS / f"{page}.md").exists(), page


# -- runbook --------------------------------------------------------------------------------


def alert_rules() -> dict[str, str]:
    """Each rule of the rules file -> its text (from its `- alert:` line to the next)."""
    blocks = re.split(r"^\s+- alert: ", RULES.read_text(), flags=re.M)[1:]
    return {block.split("\n", 1)[0].strip(): block for block in blocks}


def test_every_alert_rule_has_a_runbook_section_and_url() -> None:
    runbook = (DOCS / "runbook.md").read_text()
    sections = re.findall(r"^## (\S+)$", runbook, flags=re.M)
    rules = alert_rules()
    assert len(rules) >= 10
    assert sorted(sections) == sorted(rules), "docs/runbook.md: one section per alert rule"
    for alert, text in rules.items():
        anchor = alert.lower()  # the heading's anchor, as MkDocs makes it
        urls = re.findall(r"^\s+runbook_url: (\S+)$", text, flags=re.M)
        assert urls == [f"docs/runbook.md#{anchor}"], alert
