"""What PromQL expressions in deploy/ use, and what the daemon's metrics offer, for tests that
keep dashboards and rules from drifting away from service/core/metrics.py.

The parser is deliberately small: it understands the subset of PromQL the dashboard and the
rules use (selectors with matchers, functions, aggregations with by/without, vector matching
with on/ignoring, ranges, numbers, Grafana variables) and is tested on examples below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from service.core.metrics import Metrics
from service.core.types import MachineState, RejectReason

KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2"}
GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Series Prometheus itself makes; `ALERTS` for rule state.
PROMETHEUS_SERIES = {"up": set(), "ALERTS": {"alertname", "alertstate", "severity", "machine"}}

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


@dataclass
class Usage:
    """The series an expression selects, and the labels it groups or matches on."""

    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def parse(expr: str) -> Usage:
    """
    >>> u = parse('sum by (job, instance) (rate(a_total{reason="x y",m=~"$m"}[5m])) / b > 0.5 '
    ...           'unless on (machine) time() - c offset 5m and up{job="aemon"}')
    >>> [s.name for s in u.selectors]
    ['a_total', 'b', 'c', 'up']
    >>> u.selectors[0].matchers
    (('reason', '=', 'x y'), ('m', '=~', '$m'))
    >>> sorted(u.grouping)
    ['instance', 'job', 'machine']
    >>> q = 'histogram_quantile(0.99, sum by (le) (rate(h_bucket[1m])))'
    >>> [s.name for s in parse(q).selectors]
    ['h_bucket']
    """
    usage = Usage()
    for match in re.finditer(GROUPING, expr):
        usage.grouping.update(x.strip() for x in match.group(2).split(",") if x.strip())
    rest = re.sub(GROUPING, " ", expr)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # ranges: [5m], [$__rate_interval]
    rest = re.sub(r"\boffset\s+\S+", " ", rest)
    pattern = r"(?<![\w.$])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?"
    for match in re.finditer(pattern, rest):
        name, braces, call = match.groups()
        if call or name in KEYWORDS:
            continue
        matchers = tuple(
            (m.group(1), m.group(2), m.group(3))
            for m in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', braces or "")
        )
        usage.selectors.append(Selector(name, matchers))
    return usage


@dataclass(frozen=True)
class Series:
    """One series name the daemon can export, with its labels."""

    name: str
    labels: frozenset[str]


def exported_series() -> dict[str, Series]:
    """Every series name a fresh `Metrics` can expose, with its label names. Labelled metrics
    have no samples until first used, so names come from each metric's type and suffixes."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    labels: dict[str, tuple[str, ...]] = {
        # prometheus_client keeps label names on the wrapper only (no public accessor).
        wrapper._name: tuple(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
    }
    out: dict[str, Series] = {}
    for family in registry.collect():
        family_labels = set(labels.get(family.name, ()))
        for sample in family.samples:  # Info's labels live on its sample only
            family_labels.update(sample.labels)
        for suffix in SUFFIXES.get(family.type, ("",)):
            extra = {"le"} if suffix == "_bucket" else set()
            name = family.name + suffix
            out[name] = Series(name, frozenset(family_labels - {"le"} | extra))
    return out


def known_label_values() -> dict[str, set[str]]:
    """Label values the code defines, for labels whose values are a closed set."""
    registry = CollectorRegistry()
    Metrics(registry)
    finetune = next(f for f in registry.collect() if f.name == "aemon_finetune_runs")
    # The outcomes are declared in the metric's help text only: "... by outcome (a, b, c)."
    outcomes = re.search(r"\(([^)]*)\)\.?$", finetune.documentation)
    assert outcomes, finetune.documentation
    return {
        "reason": {r.value for r in RejectReason},
        "state": {s.value for s in MachineState},
        "outcome": {o.strip() for o in outcomes.group(1).split(",")},
    }


def problems(expr: str, exported: dict[str, Series]) -> list[str]:
    """What in `expr` the daemon does not export: unknown series, labels or label values."""
    usage = parse(expr)
    found: list[str] = []
    label_pool = set(TARGET_LABELS)
    values = known_label_values()
    if not usage.selectors:
        found.append("selects no series at all")
    for selector in usage.selectors:
        if selector.name in PROMETHEUS_SERIES:
            labels = PROMETHEUS_SERIES[selector.name] | TARGET_LABELS
        elif selector.name in exported:
            labels = set(exported[selector.name].labels) | TARGET_LABELS
        else:
            found.append(f"unknown series {selector.name}")
            continue
        label_pool |= labels
        for label, op, value in selector.matchers:
            if label not in labels:
                found.append(f"{selector.name} has no label {label}")
            elif label in values and not value.startswith("$"):
                wanted = set(value.split("|")) if op in ("=~", "!~") else {value}
                unknown = wanted - values[label]
                if unknown:
                    found.append(f"{selector.name}{{{label}}} never takes {sorted(unknown)}")
    missing = usage.grouping - label_pool
    if missing:
        found.append(f"groups or matches on labels no selected series has: {sorted(missing)}")
    return found
