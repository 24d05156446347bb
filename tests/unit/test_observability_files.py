"""deploy/observability: the alert rules and the Grafana dashboard are well formed, cover
what operators need, and every PromQL expression parses with a real PromQL parser. (That
every series they select is served is tests/e2e/test_observability.py.)"""

from __future__ import annotations

import json

import promql_parser
import pytest
import yaml

from support.promql_files import DASHBOARD, RULES, expressions, selectors

ALERTS = {
    "ImgpipeQueueAgeGrowing",
    "ImgpipeHighFailureRatio",
    "ImgpipeLeaseExpiries",
    "ImgpipeWebhookBacklog",
    "ImgpipeNoProcessors",
}
PANELS = {
    "Throughput (images/s)",
    "Queue depth",
    "Oldest queued request age",
    "Attempt outcomes",
    "Image latency (processor)",
    "In flight",
    "Lease expiries and fenced results",
    "Watchers",
    "Webhook backlog",
}


@pytest.mark.parametrize("where", sorted(expressions()))
def test_every_expression_parses_and_selects_imgpipe_series(where: str) -> None:
    found = selectors(expressions()[where])
    assert found, where
    assert all(s.name.startswith(("imgpipe_", "grpc_server_")) for s in found), found


def test_the_parser_refuses_what_prometheus_refuses() -> None:
    for broken in ("rate(imgpipe_ingest_attempts_total[5m]", "sum by (le (x)", "x[5 m]"):
        with pytest.raises(ValueError):
            promql_parser.parse(broken)


def test_the_rules_are_a_prometheus_rule_with_the_alerts_operators_need() -> None:
    rule = yaml.safe_load(RULES.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {a["alert"] for a in alerts} == ALERTS
    for alert in alerts:
        assert promql_parser.parse_duration(alert["for"]).total_seconds() > 0
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_the_dashboard_shows_what_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert {p["title"] for p in panels} >= PANELS
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
