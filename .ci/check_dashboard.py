#!/usr/bin/env python3
"""Evaluates every PromQL expression of a Grafana dashboard against a live Prometheus.

Usage: check_dashboard.py PROMETHEUS_URL DASHBOARD_JSON
Grafana variables are given the values a user sees by default ($segment = all segments,
$__rate_interval = 30s). Every expression must evaluate without error; at least 80 % must
return data. Prints one line per expression.
"""
import json
import sys
import urllib.parse
import urllib.request

SUBSTITUTIONS = {"$__rate_interval": "30s", "$segment": ".*"}


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
    if with_data < 0.8 * total:
        sys.exit(f"only {with_data} of {total} dashboard expressions returned data")


if __name__ == "__main__":
    main()
