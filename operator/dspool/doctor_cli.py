"""The ``dspool doctor`` subcommand (and ``kubectl dspool doctor``): flags, then the probe and the checks."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from dspool.catalog import Catalog
from dspool.inventory import DEFAULT_FABRIC_LABEL


def add_doctor_command(sub: Any) -> None:
    """Add ``doctor`` to the subcommands of ``dspool``."""
    parser = sub.add_parser(
        "doctor",
        help="check a live cluster for dspool: CRD, operator and Lease, RBAC, LWS, node labels, monitoring CRDs",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)")
    parser.add_argument("--context", help="the kubeconfig context to use (default: its current context)")
    parser.add_argument(
        "-n", "--namespace", default="",
        help="a namespace the operator manages (its watchNamespaces): where its writes are checked; "
        "default: cluster-wide",
    )  # fmt: skip
    parser.add_argument("--lease-name", default="dspool-operator", help="the operator's Lease (operator.leaseName)")
    parser.add_argument("--lease-namespace", help="the Lease's namespace (default: look in every namespace)")
    parser.add_argument("--node-selector", default="", help="only check nodes with these labels (k=v,...)")
    parser.add_argument("--fabric-label", default=DEFAULT_FABRIC_LABEL)
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace, catalog: Catalog) -> int:
    """Probe the cluster, print one line per check (the fix below each problem); exit 1 if any check failed."""
    from dspool.doctor import diagnose, exit_status, format_findings
    from dspool.kube.clusterview import api_client_from
    from dspool.kube.doctor_probe import probe
    from dspool.views import parse_selector

    try:
        selector = parse_selector(args.node_selector)
    except ValueError as exc:
        print(f"dspool: error: --node-selector: {exc}", file=sys.stderr)
        return 2

    api_client = api_client_from(args.kubeconfig, getattr(args, "context", None))
    facts = probe(
        api_client, lease_name=args.lease_name, lease_namespace=args.lease_namespace, namespace=args.namespace,
        fabric_label=args.fabric_label, node_selector=selector,
    )  # fmt: skip
    findings = diagnose(facts, catalog)
    if args.output == "json":
        print(json.dumps([{**dataclasses.asdict(f), "level": f.level.value} for f in findings], indent=2))
    else:
        print(format_findings(findings))
    return exit_status(findings)
