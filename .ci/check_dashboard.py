#!/usr/bin/env python3
"""Evaluates every PromQL expression of a Grafana dashboard against a live Prometheus.

Usage: check_dashboard.py PROMETHEUS_URL DASHBOARD_JSON
Grafana variables are given the values a user sees by default ($segment and $instance = all,
$__rate_interval = 30s). Every expression must evaluate without error and return data; every
panel must use the data source variable. Prints one line per expression.
"""
import json
import sys
import urllib.parse
import urllib.request

SUBSTITUTIONS = {"$__rate_interval": "30s", "$segment": ".*", "$instance": ".*"}
DATASOURCE = "${datasource}"


def expressions(dashboard):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def evaluate(base, expr):
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as err:
        body = json.load(err)
    return body


def main():
    base, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        dashboard = json.load(f)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    missing = {"datasource", "instance", "segment"} - variables
    if missing:
        sys.exit(f"dashboard variables missing: {sorted(missing)}")
    for panel in dashboard["panels"]:
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
        if panel["type"] != "row" and any(s is None or s.get("uid") != DATASOURCE for s in sources):
            sys.exit(f"panel {panel['title']!r} does not use the data source variable")
        for target in panel.get("targets", []):
            if 'instance=~"$instance"' not in target["expr"]:
                sys.exit(f"panel {panel['title']!r}: {target['expr']} is not filtered by $instance")
    failed, with_data, total = [], 0, 0
    for title, expr in expressions(dashboard):
        total += 1
        body = evaluate(base, expr)
        if body.get("status") != "success":
            failed.append((title, expr, body.get("error")))
            print(f"ERROR   {title}: {body.get('error')}")
            continue
        series = body["data"]["result"]
        has_data = bool(series) if isinstance(series, list) else series is not None
        with_data += has_data
        print(f"{'data' if has_data else 'empty':7} {title}: {len(series) if isinstance(series, list) else 1} series")
    print(f"{total} expressions: {total - len(failed)} evaluated, {with_data} with data")
    if failed:
        sys.exit(f"{len(failed)} dashboard expressions failed to evaluate")
    if with_data < total:
        sys.exit(f"only {with_data} of {total} dashboard expressions returned data")


if __name__ == "__main__":
    main()
