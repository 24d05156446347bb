"""The PromQL of deploy/observability (the Grafana dashboard and the PrometheusRule), parsed
by promql-parser (a binding of a Rust PromQL parser), and the series each one selects."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import yaml

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "imgpipe-dashboard.json"
RULES = OBSERVABILITY / "prometheus-rule.yaml"
# Grafana's own variables, replaced as Grafana replaces them before a query is sent.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}


@dataclass(frozen=True)
class Selector:
    """A series selector: the metric name and its label matchers (name, op, value)."""

    name: str
    matchers: tuple[tuple[str, str, str], ...]

    def matches(self, labels: dict[str, str]) -> bool:
        for label, op, value in self.matchers:
            actual = labels.get(label, "")
            if op == "=" and actual != value:
                return False
            if op == "=~" and not re.fullmatch(value, actual):
                return False
        return True


def expressions() -> dict[str, str]:
    """Every expression, by where it is (`dashboard: PANEL/REF`, `rule: ALERT`)."""
    found: dict[str, str] = {}
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found[f"dashboard: {panel['title']}/{target['refId']}"] = expr
    rule = yaml.safe_load(RULES.read_text())
    for group in rule["spec"]["groups"]:
        for each in group["rules"]:
            found[f"rule: {each['alert']}"] = each["expr"]
    return found


OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def selectors(expr: str) -> set[Selector]:
    """The series selectors of expr, read from its syntax tree (raises ValueError if it
    does not parse)."""
    tree = promql_parser.parse(expr)
    found: set[Selector] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = tuple(
                (m.name, OPS[str(m.op).rsplit(".", 1)[-1]], m.value) for m in node.matchers.matchers
            )
            found.add(Selector(str(node.name), matchers))
        return True

    promql_parser.walk(tree, visit)
    return found
