"""The ``dspool`` command line: plan, models, accelerators, simulate (and the operator's commands)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import yaml
from pydantic import ValidationError

from dspool import kubectl_conventions
from dspool.api import KIND, DeepSeekDeployment, Strategy
from dspool.catalog import Catalog, CatalogError, Precision, UnknownIdError, load_catalog
from dspool.doctor_cli import add_doctor_command
from dspool.inventory import DEFAULT_FABRIC_LABEL
from dspool.layouts import rules_table
from dspool.placement import ReplicaRequest, place_replicas
from dspool.rebalance import MAX_MOVES_LIMIT, RebalanceMode, RebalancePolicy
from dspool.report import format_table
from dspool.settings import (
    add_run_arguments,
    from_args,
    non_negative_float,
    positive_float,
    positive_int,
)
from dspool.sizing import Backend, SizingPlan, SizingRequest, plan
from dspool.weights.state import DEFAULT_MODEL_CACHE_GIB

EXIT_USAGE = 2

if TYPE_CHECKING:  # the simulator is imported when `dspool simulate` runs, not at every start
    from dspool.sim.simulate import SimulationReport


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be in (0, 1], e.g. 0.90")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every dspool subcommand."""
    parser = _Parser(prog="dspool", description="Size, place and serve DeepSeek models on a pooled cluster.")
    parser.add_argument("--catalog", metavar="FILE", help="extra catalog YAML (adds or overrides entries)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_plan_command(sub)
    _add_catalog_commands(sub)
    _add_run_command(sub)
    _add_simulate_command(sub)
    _add_rebalance_command(sub)
    _add_render_command(sub)
    _add_pool_command(sub)
    _add_cache_command(sub)
    add_doctor_command(sub)
    kubectl_conventions.apply(sub)  # --context, -n/-A, -o table|wide|json|yaml
    return parser


def _add_plan_command(sub: argparse._SubParsersAction[Any]) -> None:
    """``dspool plan``: what to size (a model, a manifest, --all), the sizing request's flags, the output."""
    p_plan = sub.add_parser("plan", help="size a model: devices, nodes, precision, TP/PP, memory account")
    p_plan.add_argument("model", nargs="?", help="model id (see 'dspool models')")
    p_plan.add_argument("-f", "--filename", help="a DeepSeekDeployment manifest to plan (with --cluster: dry run)")
    p_plan.add_argument("--cluster", action="store_true", help="place on the live pool of the current kubeconfig")
    p_plan.add_argument("--kubeconfig", help="kubeconfig for --cluster (default: $KUBECONFIG)")
    p_plan.add_argument("--node-selector", default="", help="with --cluster: only nodes with these labels (k=v,...)")
    p_plan.add_argument("--accelerator", "-a", help="accelerator id (see 'dspool accelerators')")
    p_plan.add_argument("--all", action="store_true", help="every model x every accelerator")
    p_plan.add_argument("--precision", choices=["auto", *[p.value for p in Precision]], default="auto")
    p_plan.add_argument("--backend", choices=["auto", *[b.value for b in Backend]], default="auto")
    p_plan.add_argument("--kv-cache-tokens", type=positive_int, default=SizingRequest().kv_cache_tokens)
    p_plan.add_argument("--max-model-len", type=positive_int, help="longest request; the KV budget covers it")
    p_plan.add_argument("--gpu-memory-utilization", type=_fraction, default=SizingRequest().gpu_memory_utilization)
    p_plan.add_argument("--devices-per-node", type=positive_int, help="server size (default: catalog)")
    p_plan.add_argument("--device-memory-gib", type=positive_float, help="device memory (default: catalog)")
    p_plan.add_argument(
        "--overhead-gib", type=non_negative_float, help="runtime reserve per device, GiB (replaces the estimate)"
    )
    p_plan.add_argument("--max-nodes", type=positive_int, default=SizingRequest().max_nodes)
    p_plan.add_argument("--single-node", action="store_true", help="never span nodes")
    p_plan.add_argument("--image", help="the engine image the replica runs (as spec.serving.image; default: dspool's)")
    p_plan.add_argument(
        "--parallelism",
        choices=["tensor", "data-expert"],
        default="tensor",
        help="data-expert: data-parallel attention with expert-parallel MoE (one MLA cache per rank)",
    )
    p_plan.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto", help="fp8 halves the KV cache")
    p_plan.add_argument(
        "--mtp", type=positive_int, metavar="TOKENS", help="MTP speculative decoding with TOKENS draft tokens per step"
    )
    p_plan.add_argument(
        "--accept-marginal", action="store_true", help="take the smallest fitting layout even with little headroom"
    )
    p_plan.add_argument("--rules", action="store_true", help="print the layout rules each backend checks, and exit")
    p_plan.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p_plan.set_defaults(handler=_cmd_plan)


def _add_catalog_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """``dspool models`` and ``dspool accelerators``: the catalog's entries."""
    p_models = sub.add_parser("models", help="list the models in the catalog")
    p_models.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p_models.set_defaults(handler=_cmd_models)

    p_acc = sub.add_parser("accelerators", help="list the accelerators in the catalog")
    p_acc.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p_acc.set_defaults(handler=_cmd_accelerators)


def _add_run_command(sub: argparse._SubParsersAction[Any]) -> None:
    """``dspool run``: the operator, with its settings' flags."""
    p_run = sub.add_parser("run", help="run the operator against the current kubeconfig (or in-cluster)")
    add_run_arguments(p_run)
    p_run.add_argument("--verbose", "-v", action="store_true", help="the same as --log-level debug")
    p_run.set_defaults(handler=_cmd_run)


def _add_simulate_command(sub: argparse._SubParsersAction[Any]) -> None:
    """``dspool simulate``: a trace played on a pool file, with the rebalancing and queueing switches."""
    from dspool.weights.estimate import DEFAULT_DISK_GBPS, DEFAULT_ORIGIN_GBPS, DEFAULT_ORIGIN_TOTAL_GBPS

    p_sim = sub.add_parser(
        "simulate", help="capacity what-if: play a trace of DeepSeekDeployments on a pool file, offline"
    )
    p_sim.add_argument("--pool", required=True, metavar="POOL.yaml", help="a pool file (examples/pools/ format)")
    p_sim.add_argument("--trace", required=True, metavar="TRACE.jsonl", help="one arrival per line, sorted by at")
    p_sim.add_argument("--strategy", choices=[s.value for s in Strategy], help="override every spec's strategy")
    p_sim.add_argument("--rebalance", choices=["off", "on"], default="off", help="move replicas to make room")
    p_sim.add_argument(
        "--max-moves", type=positive_int, default=RebalancePolicy().max_moves, help="replicas one plan may move"
    )
    p_sim.add_argument("--queue", action="store_true", help="refused replicas wait for room instead of being lost")
    p_sim.add_argument(
        "--move-seconds", type=non_negative_float, default=0.0, help="until a moved replica's new copy is Ready"
    )
    weights = p_sim.add_argument_group("weights (time-to-ready; not simulated unless --model-cache is given)")
    weights.add_argument(
        "--model-cache",
        choices=["on", "off"],
        help="on: node model caches (placement prefers warm nodes); off: every replica fetches its own copy",
    )
    weights.add_argument(
        "--origin-gbps", type=positive_float, default=DEFAULT_ORIGIN_GBPS, help="origin -> one node, Gbit/s"
    )
    weights.add_argument(
        "--origin-total-gbps",
        type=positive_float,
        default=DEFAULT_ORIGIN_TOTAL_GBPS,
        help="origin -> the whole pool, Gbit/s (shared by every fetch)",
    )
    weights.add_argument(
        "--disk-gbps", type=positive_float, default=DEFAULT_DISK_GBPS, help="local disk -> engine, Gbit/s"
    )
    weights.add_argument(
        "--warm-nodes", type=int, default=0, help="prefetch each entry to N more nodes than its replicas use"
    )
    p_sim.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p_sim.set_defaults(handler=_cmd_simulate)


def _add_rebalance_command(sub: argparse._SubParsersAction[Any]) -> None:
    """``dspool rebalance --dry-run``: what would move on the live pool."""
    p_reb = sub.add_parser("rebalance", help="what rebalancing would move to place the waiting replicas (live pool)")
    p_reb.add_argument("--dry-run", action="store_true", required=True, help="only say what would move (required)")
    p_reb.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG)")
    p_reb.add_argument("--node-selector", default="", help="only nodes with these labels (k=v,...)")
    p_reb.add_argument("--fabric-label", default=DEFAULT_FABRIC_LABEL)
    p_reb.add_argument("--max-moves", type=positive_int, default=RebalancePolicy().max_moves)
    p_reb.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p_reb.set_defaults(handler=_cmd_rebalance)


def _add_render_command(sub: argparse._SubParsersAction[Any]) -> None:
    """``dspool render``: the objects for DSD manifests placed on a pool file."""
    p_render = sub.add_parser(
        "render", help="the objects dspool would create for DSD manifests placed on a pool file (like helm template)"
    )
    p_render.add_argument("-f", "--filename", required=True, metavar="DSD.yaml", help="DeepSeekDeployment manifest(s)")
    p_render.add_argument("--pool", required=True, metavar="POOL.yaml", help="a pool file (examples/pools/ format)")
    p_render.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    p_render.add_argument(
        "--lws", action=argparse.BooleanOptionalAction, default=True, help="the cluster has LeaderWorkerSet"
    )
    p_render.add_argument("--rdma-resource", help="as the operator's --rdma-resource")
    p_render.set_defaults(handler=_cmd_render)


def _add_pool_command(sub: argparse._SubParsersAction[Any]) -> None:
    """``dspool pool``: the live pool's nodes, devices and replicas."""
    p_pool = sub.add_parser("pool", help="print the pool: nodes by accelerator, devices used/free, replicas")
    p_pool.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG)")
    p_pool.add_argument("--node-selector", default="", help="only nodes with these labels (k=v,...)")
    p_pool.add_argument("--fabric-label", default=DEFAULT_FABRIC_LABEL)
    p_pool.add_argument("--nodes", action="store_true", help="list every node, not only the totals")
    p_pool.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p_pool.set_defaults(handler=_cmd_pool)


def _add_cache_command(sub: argparse._SubParsersAction[Any]) -> None:
    """``dspool cache``: every node's model cache (what the fetch Jobs recorded)."""
    p_cache = sub.add_parser("cache", help="print the node model cache: entries per node, state, size, progress")
    p_cache.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG)")
    p_cache.add_argument("--model-cache-gib", type=float, default=DEFAULT_MODEL_CACHE_GIB,
                         help="capacity of nodes without the dspool.io/model-cache-gib label")  # fmt: skip
    p_cache.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p_cache.set_defaults(handler=_cmd_cache)


def _request_from_args(args: argparse.Namespace) -> SizingRequest:
    if args.devices_per_node is not None and args.devices_per_node > 64:
        raise UsageError("--devices-per-node must be at most 64")
    if args.max_nodes > 64:
        raise UsageError("--max-nodes must be at most 64")
    fields = dict(
        precision=args.precision,
        backend=args.backend,
        kv_cache_tokens=args.kv_cache_tokens,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        devices_per_node=args.devices_per_node,
        device_memory_gib=args.device_memory_gib,
        overhead_gib=args.overhead_gib,
        max_nodes=args.max_nodes,
        allow_multi_node=not args.single_node,
        engine_image=args.image,
        parallelism=args.parallelism,
        kv_cache_dtype=args.kv_cache_dtype,
        speculative_tokens=args.mtp or 0,
        accept_marginal=args.accept_marginal,
    )
    try:
        return SizingRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise UsageError(f"{flag}: {first['msg'].lower()}") from None


def _cmd_plan(args: argparse.Namespace, catalog: Catalog) -> int:
    if args.rules:
        rows = rules_table()
        if args.output == "json":
            print(json.dumps(rows, indent=2))
        else:
            print(format_table(["RULE", "BACKENDS", "CONSTRAINT", "SOURCE"], [list(row.values()) for row in rows]))
        return 0
    if args.filename:
        return _cmd_plan_file(args, catalog)
    if args.cluster:
        raise UsageError("--cluster needs -f DEPLOYMENT.yaml")
    if args.all and (args.model or args.accelerator):
        raise UsageError("--all plans every model on every accelerator; give no MODEL or --accelerator with it")
    if not args.all and not args.model:
        raise UsageError(f"give a MODEL or --all; models: {', '.join(catalog.model_ids)}")
    request = _request_from_args(args)
    models = list(catalog.models) if args.all else [catalog.model(args.model)]
    accelerators = [catalog.accelerator(args.accelerator)] if args.accelerator else list(catalog.accelerators)
    plans = [plan(model, accelerator, request) for model in models for accelerator in accelerators]
    if args.output == "json":
        payload: Any = (
            plans[0].model_dump(mode="json", by_alias=True)
            if args.accelerator
            else [p.model_dump(mode="json", by_alias=True) for p in plans]
        )
        print(json.dumps(payload, indent=2))
    elif args.accelerator:
        print(format_plan_detail(plans[0]))
    else:
        print(format_plan_table(plans))
    return 0


def format_plan_detail(result: SizingPlan) -> str:
    """One plan as a short human-readable block."""
    mem = result.memory_gib
    lines = [
        f"model:        {result.model}",
        f"accelerator:  {result.accelerator}",
        f"precision:    {result.precision.value if result.precision else '-'}",
        f"backend:      {result.backend.value if result.backend else '-'}",
        f"feasible:     {'yes' if result.feasible else 'no'}",
    ]
    if result.feasible:
        lines += [
            f"devices:      {result.devices_per_replica} per replica, {result.devices_per_node} per node "
            f"on {result.nodes_per_replica} node(s)",
            f"layout:       {result.layout}",
            f"maxModelLen:  {result.max_model_len}",
        ]
        if result.marginal:
            lines.append(f"marginal:     yes, {result.memory_gib.free_per_device:.1f} GiB left per device")
    lines += [
        f"memory/device (GiB): device {mem.device_memory:.1f}, usable {mem.usable_per_device:.1f}, "
        f"weights {mem.weights_per_device:.1f}, KV {mem.kv_cache_per_device:.1f}, "
        f"runtime reserve {mem.overhead_per_device:.1f}, free {mem.free_per_device:.1f}",
        f"reason:       {result.reason}",
    ]
    return "\n".join(lines)


def format_plan_table(plans: Sequence[SizingPlan]) -> str:
    """Plans as an aligned table, one row each; infeasible rows carry their reason."""
    header = ["MODEL", "ACCELERATOR", "PREC", "DEVICES", "NODES", "LAYOUT", "BACKEND", "MAX-LEN",
              "WEIGHTS/DEV", "KV/DEV", "USABLE/DEV", "NOTE"]  # fmt: skip
    rows = []
    for p in plans:
        mem = p.memory_gib
        note = p.reason if not p.feasible else _short_note(p)
        rows.append(
            [
                p.model,
                p.accelerator,
                p.precision.value if p.precision else "-",
                str(p.devices_per_replica) if p.feasible else "-",
                str(p.nodes_per_replica) if p.feasible else "-",
                p.layout,
                p.backend.value if p.backend else "-",
                str(p.max_model_len) if p.feasible else "-",
                f"{mem.weights_per_device:.1f}" if p.feasible else "-",
                f"{mem.kv_cache_per_device:.1f}" if p.feasible else "-",
                f"{mem.usable_per_device:.1f}",
                note,
            ]
        )
    return format_table(header, rows)


def _short_note(result: SizingPlan) -> str:
    """ "marginal" when the plan has little headroom, then the first clause of the precision note."""
    precision = result.precision_note.split("; ")[0].split(": vLLM's")[0]
    marginal = f"marginal ({result.memory_gib.free_per_device:.1f} GiB left)" if result.marginal else ""
    return "; ".join(part for part in (marginal, precision) if part)


def _cmd_models(args: argparse.Namespace, catalog: Catalog) -> int:
    if args.output == "json":
        print(json.dumps([m.model_dump(mode="json", by_alias=True) for m in catalog.models], indent=2))
        return 0
    rows = [
        [
            m.id,
            ", ".join(m.aliases) or "-",
            f"{m.params_b:g}B",
            m.attention.upper() + ("+DSA" if m.sparse_attention else "") + (" MoE" if m.moe else ""),
            str(m.layers),
            f"{m.attention_heads}/{m.kv_heads}",
            str(m.max_context),
            m.native_precision.value,
            str(m.kv_bytes_per_token),
            m.hf_id,
        ]
        for m in catalog.models
    ]
    header = [
        "MODEL",
        "ALIASES",
        "PARAMS",
        "ATTN",
        "LAYERS",
        "HEADS/KV",
        "MAX-CTX",
        "NATIVE",
        "KV-B/TOKEN",
        "HF-ID",
    ]
    print(format_table(header, rows))
    return 0


def _cmd_accelerators(args: argparse.Namespace, catalog: Catalog) -> int:
    if args.output == "json":
        print(json.dumps([a.model_dump(mode="json", by_alias=True) for a in catalog.accelerators], indent=2))
        return 0
    rows = [
        [
            a.id,
            a.vendor.value,
            a.architecture + (f" {a.compute_capability}" if a.compute_capability else ""),
            f"{a.memory_gib:g}",
            "yes" if a.fp8 else "no",
            str(a.devices_per_node),
            a.intra_node_link,
            a.resource_name,
        ]
        for a in catalog.accelerators
    ]
    header = ["ACCELERATOR", "VENDOR", "ARCH", "MEM-GIB", "FP8", "PER-NODE", "LINK", "RESOURCE"]
    print(format_table(header, rows))
    return 0


Handler = Callable[[argparse.Namespace, Catalog], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dspool`` console script."""
    try:
        parser = build_parser()
    except ValueError as exc:  # a DSPOOL_* variable that does not parse as its flag would
        print(f"dspool: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        catalog = load_catalog(args.catalog)
        handler: Handler = args.handler
        return kubectl_conventions.run_handler(handler, args, catalog)
    except (UsageError, UnknownIdError, CatalogError) as exc:
        print(f"dspool: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0


def _node_selector(args: argparse.Namespace) -> dict[str, str]:
    from dspool.views import parse_selector

    try:
        return parse_selector(args.node_selector)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _load_deployment(path: str) -> DeepSeekDeployment:
    try:
        with open(path) as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise UsageError(f"{path}: expected a {KIND} manifest")
    raw.setdefault("metadata", {}).setdefault("namespace", "default")
    try:
        return DeepSeekDeployment.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _cmd_plan_file(args: argparse.Namespace, catalog: Catalog) -> int:
    """Plan a DSD manifest: per accelerator (offline) or placed on the live pool (--cluster, a dry run)."""
    if args.model or args.all:
        raise UsageError("-f plans the manifest's model; give no MODEL or --all with it")
    dsd = _load_deployment(args.filename)
    model = catalog.model(dsd.spec.model)
    if not args.cluster:
        request = ReplicaRequest.from_spec(dsd.namespace, dsd.name, 0, dsd.spec, catalog)
        ids = dsd.spec.placement.accelerator_types or catalog.accelerator_ids
        plans = [plan(model, catalog.accelerator(i), request.sizing) for i in ids]
        print(format_plan_table(plans))
        return 0
    from dspool.kube.clusterview import api_client_from, read_cluster

    selector = _node_selector(args)
    view = read_cluster(api_client_from(args.kubeconfig, args.context), catalog, node_selector=selector)
    requests = [
        ReplicaRequest.from_spec(dsd.namespace, dsd.name, i, dsd.spec, catalog) for i in range(dsd.spec.replicas)
    ]
    decisions = place_replicas(view.pool, requests, catalog)
    rows = []
    for index, decision in enumerate(decisions):
        placed = decision.placement
        nodes = ", ".join(f"{n.name}:{n.devices}" for n in placed.nodes) if placed else "-"
        rows.append([f"{dsd.name}/{index}", placed.accelerator if placed else "-", nodes, decision.reason])
    print(format_table(["REPLICA", "ACCELERATOR", "NODES:DEVICES", "WHY"], rows))
    return 0


def _load_manifests(path: str) -> list[dict[str, Any]]:
    """Every DeepSeekDeployment document of a YAML file, validated; a bad file is one UsageError line."""
    try:
        with open(path) as handle:
            documents = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not documents:
        raise UsageError(f"{path}: no DeepSeekDeployment in the file")
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise UsageError(f"{path}: document {index + 1} is not a {KIND}")
        try:
            DeepSeekDeployment.model_validate(
                {k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in doc}
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise UsageError(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    return documents


def _cmd_render(args: argparse.Namespace, catalog: Catalog) -> int:
    """Print the objects of each DSD in the file, placed on the pool file with the operator's own code."""
    from dspool.reconcile import ReconcileSettings
    from dspool.render import render_deployment
    from dspool.sim.inputs import InputError, load_pool_file
    from dspool.sim.simulate import pool_from_file
    from dspool.workloads import Interconnect, images_from_env

    manifests = _load_manifests(args.filename)
    try:
        pool = pool_from_file(load_pool_file(args.pool, catalog), catalog)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    settings = ReconcileSettings(
        lws_available=args.lws,
        images=images_from_env(os.environ),
        interconnect=Interconnect(rdma_resource=args.rdma_resource),
    )
    rendered = [render_deployment(doc, pool, catalog, settings) for doc in manifests]
    incomplete = [r for r in rendered if r.placed < r.desired or not r.objects]
    for result in incomplete:
        print(
            f"dspool: {result.name}: {result.placed} of {result.desired} replicas placed: {result.message}",
            file=sys.stderr,
        )
    objects = [obj for result in rendered for obj in result.objects]
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        for result in rendered:
            print(f"# {result.name}: {result.phase}; " + "; ".join(result.reasons or [result.message]))
            for obj in result.objects:
                print("---")
                print(yaml.safe_dump(obj, sort_keys=False).rstrip())
    return 1 if incomplete else 0


def _cmd_simulate(args: argparse.Namespace, catalog: Catalog) -> int:
    """Play a trace on a pool file with the operator's own placement (and rebalancing) code."""
    from dspool.sim.inputs import InputError, load_pool_file, load_trace
    from dspool.sim.simulate import SimulationSettings, pool_from_file, simulate
    from dspool.weights.estimate import Bandwidth

    _check_max_moves(args)
    if args.warm_nodes < 0:
        raise UsageError("--warm-nodes must be at least 0")
    if args.warm_nodes and args.model_cache != "on":
        raise UsageError("--warm-nodes needs --model-cache on")
    try:
        pool_file = load_pool_file(args.pool, catalog)
        trace = load_trace(args.trace, catalog)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    settings = SimulationSettings(
        strategy=Strategy(args.strategy) if args.strategy else None,
        rebalance=args.rebalance == "on",
        policy=RebalancePolicy(max_moves=args.max_moves),
        queue=args.queue,
        move_seconds=args.move_seconds,
        model_cache=None if args.model_cache is None else args.model_cache == "on",
        bandwidth=Bandwidth(
            origin_gbps=args.origin_gbps, origin_total_gbps=args.origin_total_gbps, disk_gbps=args.disk_gbps
        ),
        warm_nodes=args.warm_nodes,
    )
    report = simulate(pool_from_file(pool_file, catalog), trace, catalog, settings)
    if args.output == "json":
        print(json.dumps(report.as_json(), indent=2))
    else:
        span_hours = (trace[-1].at - trace[0].at) / 3600 if trace else 0.0
        _print_simulation(args, pool_file.name, report, span_hours, settings.rebalance)
    return 0


def _print_simulation(
    args: argparse.Namespace, pool_name: str, report: SimulationReport, span_hours: float, rebalance: bool
) -> None:
    """The text report of ``dspool simulate``: the header, acceptance per model, then one line per figure."""
    rebalancing = f"rebalancing on (at most {args.max_moves} moves per plan)" if rebalance else "rebalancing off"
    print(
        f"pool {pool_name}: {report.pool_nodes} nodes, {report.pool_devices} devices; trace: {report.arrivals} "
        f"arrivals over {span_hours:.1f} h; {args.strategy or 'strategy from each spec'}, {rebalancing}"
        + (", refused replicas queue" if args.queue else "")
    )
    rows = [
        [model, str(c.requested), str(c.placed), f"{c.placed / c.requested:.1%}" if c.requested else "-"]
        for model, c in report.per_model.items()
    ]
    rows.append(["all", str(report.replicas_requested), str(report.replicas_placed), f"{report.acceptance:.1%}"])
    print(format_table(["MODEL", "REQUESTED", "PLACED", "ACCEPTANCE"], rows))
    print()
    print(f"allocation  {report.allocation:.1%} of the devices booked (time-averaged, first to last arrival)")
    print(
        f"moves       {report.moves} ({report.moves_per_arrival:.2f} per arrival) in {report.rebalance_plans} plans, "
        f"{report.devices_disrupted} devices disrupted, {report.rolled_back} rolled back"
    )
    print(
        f"decisions   p50 {report.decision_seconds.p50 * 1000:.2f} ms, p99 {report.decision_seconds.p99 * 1000:.2f} ms"
    )
    if args.queue:
        print(
            f"waiting     {report.waiting.replicas} replicas waited (mean {report.waiting.mean_seconds:.0f} s, "
            f"p99 {report.waiting.p99_seconds:.0f} s); {report.waiting.never_placed} never placed"
        )
    if report.time_to_ready_seconds is not None:
        ready = report.time_to_ready_seconds
        print(
            f"weights     model cache {args.model_cache}: time-to-ready mean {ready.mean / 60:.1f} min, "
            f"p50 {ready.p50 / 60:.1f} min, p95 {ready.p95 / 60:.1f} min over {ready.replicas} replicas "
            f"({ready.never_ready} left before Ready); "
            f"{(report.origin_bytes or 0) / 1024**4:.2f} TiB from the origin; "
            f"{report.cache_hit_ratio or 0.0:.1%} cache hits"
        )
    for example in report.refusal_examples[:1]:
        print(f"first refusal: {example}")
    for example in report.plan_examples[:1]:
        print(f"first plan:    {example}")


def _check_max_moves(args: argparse.Namespace) -> None:
    if args.max_moves > MAX_MOVES_LIMIT:
        raise UsageError(f"--max-moves must be at most {MAX_MOVES_LIMIT}")


def _cmd_rebalance(args: argparse.Namespace, catalog: Catalog) -> int:
    """Plan rebalancing on the live pool, as the operator's next pass would (nothing is written)."""
    from datetime import UTC, datetime

    from dspool.kube.clusterview import api_client_from, read_cluster, read_pdbs
    from dspool.placement import DemandMix
    from dspool.rebalance import pdb_budgets, refused_replica, start_plans
    from dspool.report import demand_of

    _check_max_moves(args)
    api_client = api_client_from(args.kubeconfig, args.context)
    view = read_cluster(api_client, catalog, args.fabric_label, _node_selector(args))
    only = kubectl_conventions.namespace_filter(args)
    refused = [r for r in (refused_replica(b, catalog, None) for b in view.deployments) if r is not None]
    refused = [r for r in refused if only is None or r.deployment.startswith(f"{only}/")]
    if not refused:
        if args.output == "json":
            print("[]")
        else:
            print("no DeepSeekDeployment is waiting for room: nothing to rebalance")
        return 0
    by_deployment: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for pod in view.pods:
        owner = (pod["metadata"].get("labels") or {}).get("dspool.io/deployment")
        if owner:
            by_deployment.setdefault((pod["metadata"]["namespace"], owner), []).append(pod)
    plans = start_plans(
        view.pool, refused, view.deployments, catalog, RebalanceMode.DRY_RUN, datetime.now(UTC),
        disruptions_allowed=pdb_budgets(read_pdbs(api_client), by_deployment),
        policy=RebalancePolicy(max_moves=args.max_moves), demand=DemandMix.of(demand_of(view.deployments, catalog)),
    )  # fmt: skip
    rows = []
    for found in plans:
        moves = (
            "; ".join(f"{m.deployment}#{m.replica} {','.join(n.name for n in m.from_nodes)} -> "
                      f"{','.join(n.name for n in m.to_nodes)}" for m in found.plan.moves)
            if found.plan else "-"
        )  # fmt: skip
        rows.append([f"{found.deployment}#{found.replica}", moves, found.reason])
    if args.output == "json":
        print(json.dumps([dict(zip(("waiting", "wouldMove", "why"), row, strict=True)) for row in rows], indent=2))
        return 0
    print(format_table(["WAITING", "WOULD MOVE", "WHY"], rows))
    return 0


def _cmd_run(args: argparse.Namespace, catalog: Catalog) -> int:
    from dspool.handlers import run

    _check_max_moves(args)
    settings = from_args(args)
    if args.verbose:
        settings.log_level = "debug"
    run(settings)
    return 0


def _cmd_pool(args: argparse.Namespace, catalog: Catalog) -> int:
    from dspool.kube.clusterview import api_client_from, read_cluster
    from dspool.report import format_pool, pool_summary

    selector = _node_selector(args)
    view = read_cluster(api_client_from(args.kubeconfig, args.context), catalog, args.fabric_label, selector)
    only = kubectl_conventions.namespace_filter(args)
    reservations = [r for r in view.reservations if only is None or r.deployment.startswith(f"{only}/")]
    summary = pool_summary(view.pool, reservations, view.deployments, catalog)
    if args.output == "json":
        print(json.dumps(summary, indent=2))
    else:
        print(format_pool(summary, view.pool, show_nodes=True if args.nodes else None))
    return 0


def _cmd_cache(args: argparse.Namespace, catalog: Catalog) -> int:
    from dspool.kube.clusterview import api_client_from, read_model_cache
    from dspool.weights.jobs import cache_view
    from dspool.weights.report import cache_rows, format_cache
    from dspool.weights.wanted import node_caches

    jobs, nodes = read_model_cache(api_client_from(args.kubeconfig, args.context))
    rows = cache_rows(cache_view(jobs, *node_caches(nodes, args.model_cache_gib)))
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(rows, sort_keys=False), end="")
    else:
        print(format_cache(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
