"""The operator's settings: one dataclass, from which `dspool run`'s flags, their environment variables and
the chart's values all derive, so a default lives in one place.

Each field of :class:`OperatorSettings` carries its flag, help, chart value and parser in its metadata.
A flag's default is the field's default, unless ``DSPOOL_<FIELD>`` is set in the environment (a container
can be configured without arguments); a flag given on the command line wins over both.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dspool.inventory import DEFAULT_FABRIC_LABEL
from dspool.rebalance import RebalanceMode, RebalancePolicy
from dspool.reconcile import DEFAULT_STUCK_AFTER_SECONDS
from dspool.views import parse_selector
from dspool.weights.jobs import FetchSettings
from dspool.weights.state import DEFAULT_MODEL_CACHE_DIR, DEFAULT_MODEL_CACHE_GIB, MODEL_CACHE_CAPACITY_LABEL
from dspool.workloads import Interconnect

ENV_PREFIX = "DSPOOL_"
LOG_LEVELS = ("debug", "info", "warning", "error")
_POLICY = RebalancePolicy()


def positive_int(text: str) -> int:
    """A whole number >= 1 (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0 (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text} must be a number >= 0")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (an argparse type)."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def port(text: str) -> int:
    """A TCP port, or 0 for off (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535; 0 = off)")
    return value


def env_assignment(text: str) -> str:
    """``NAME=VALUE`` with a valid variable name (an argparse type)."""
    name, sep, _ = text.partition("=")
    if not sep or not re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", name):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return text


def selector(text: str) -> dict[str, str]:
    """A label selector ``k=v,k2`` (an argparse type)."""
    try:
        return parse_selector(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def flag(
    help: str,
    chart: str | None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    name: str | None = None,
    short: str | None = None,
    repeat: bool = False,
    boolean: bool = False,
) -> dict[str, Any]:
    """Field metadata: how a setting appears as a `dspool run` flag (``name``: default ``--<field>``), as an
    environment variable and as a chart value (``chart``: the ``operator.<value>`` name, None = not one)."""
    return {
        "help": help, "chart": chart, "parse": parse, "choices": choices, "flag": name, "short": short,
        "repeat": repeat, "boolean": boolean,
    }  # fmt: skip


@dataclass
class OperatorSettings:
    """Settings of one operator process (``dspool run``)."""

    namespaces: list[str] = field(
        default_factory=list,
        metadata=flag(
            "manage DSDs only here (repeatable; default: every namespace)",
            None,
            name="--namespace",
            short="-n",
            repeat=True,
        ),
    )
    node_selector: dict[str, str] = field(
        default_factory=dict,
        metadata=flag("only nodes with these labels form the pool (k=v,...)", "poolNodeSelector", parse=selector),
    )
    fabric_label: str = field(
        default=DEFAULT_FABRIC_LABEL, metadata=flag("node label that bounds multi-node replicas", "fabricLabel")
    )
    liveness_port: int = field(default=8080, metadata=flag("serve /healthz here (0 = off)", "livenessPort", parse=port))
    metrics_port: int = field(
        default=8081, metadata=flag("serve Prometheus /metrics here (0 = off)", "metricsPort", parse=port)
    )
    node_metrics: bool = field(
        default=True,
        metadata=flag(
            "export devices per node (3 series a node; --no-node-metrics for very large pools)",
            "nodeMetrics",
            boolean=True,
        ),
    )
    resync_seconds: float = field(
        default=30.0, metadata=flag("reconcile everything at least this often", "resyncSeconds", parse=positive_float)
    )
    stuck_after_seconds: float = field(
        default=DEFAULT_STUCK_AFTER_SECONDS,
        metadata=flag(
            "re-place a replica whose pods stay unschedulable this long", "stuckAfterSeconds", parse=positive_float
        ),
    )
    node_grace_seconds: float = field(
        default=60.0,
        metadata=flag(
            "a node NotReady for less than this keeps its replicas", "nodeGraceSeconds", parse=positive_float
        ),
    )
    lease_namespace: str = field(
        default="default",
        metadata=flag("namespace of the leader-election Lease (default: $POD_NAMESPACE or default)", None),
    )
    lease_name: str = field(
        default="dspool-operator",
        metadata=flag("operators sharing a pool must share this Lease; disjoint pools may differ", "leaseName"),
    )
    lease_seconds: int = field(
        default=15,
        metadata=flag(
            "a standby takes the Lease after its record has not changed this long", "leaseSeconds", parse=positive_int
        ),
    )
    write_concurrency: int = field(
        default=16,
        metadata=flag(
            "API writes in flight at once, each: statuses, the workloads that follow them, and Services and events",
            "writeConcurrency",
            parse=positive_int,
        ),
    )
    rebalance: str = field(
        default=RebalanceMode.DRY_RUN.value,
        metadata=flag(
            "move replicas of other DSDs (make-before-break) to place a waiting one: off, dry-run (say what would "
            "move), on",
            "rebalance",
            choices=tuple(m.value for m in RebalanceMode),
        ),
    )
    max_moves: int = field(
        default=_POLICY.max_moves, metadata=flag("replicas one plan may move", "maxMoves", parse=positive_int)
    )
    max_moves_in_flight: int = field(
        default=_POLICY.max_in_flight,
        metadata=flag("moves in flight pool-wide", "maxMovesInFlight", parse=positive_int),
    )
    rebalance_cooldown_seconds: float = field(
        default=_POLICY.cooldown_seconds,
        metadata=flag(
            "a DSD is not moved again this soon after one of its moves started",
            "rebalanceCooldownSeconds",
            parse=non_negative_float,
        ),
    )
    move_ready_timeout_seconds: float = field(
        default=_POLICY.ready_timeout_seconds,
        metadata=flag(
            "a moved replica's new copy not Ready by then is rolled back (the old one keeps serving)",
            "moveReadyTimeoutSeconds",
            parse=positive_float,
        ),
    )
    rdma_resource: str | None = field(
        default=None,
        metadata=flag(
            "extended resource of the RDMA device plugin (e.g. rdma/rdma_shared_device_a); multi-node NVIDIA "
            "replicas request it (unset: NCCL uses TCP and the DSD's Interconnect condition warns)",
            "rdmaResource",
        ),
    )
    rdma_env: list[str] = field(
        default_factory=list,
        metadata=flag(
            "NAME=VALUE set in multi-node pods, e.g. NCCL_IB_HCA=mlx5 (repeatable)",
            "rdmaEnv",
            parse=env_assignment,
            repeat=True,
        ),
    )
    model_cache: bool = field(
        default=False,
        metadata=flag(
            "keep weights in a cache directory on every node, filled by fetch Jobs, instead of each engine pod "
            "downloading them (docs/weights.md)",
            "modelCache",
            boolean=True,
        ),
    )
    model_cache_dir: str = field(
        default=DEFAULT_MODEL_CACHE_DIR,
        metadata=flag("the node model cache's directory on every accelerator node (hostPath)", "modelCacheDir"),
    )
    model_cache_gib: float = field(
        default=DEFAULT_MODEL_CACHE_GIB,
        metadata=flag(
            f"a node's cache capacity when it has no {MODEL_CACHE_CAPACITY_LABEL} label",
            "modelCacheGiB",
            parse=positive_float,
        ),
    )
    max_fetches_per_node: int = field(
        default=1, metadata=flag("model fetches at once on one node", "maxFetchesPerNode", parse=positive_int)
    )
    max_fetches: int = field(
        default=4,
        metadata=flag("model fetches at once pool-wide (the origin's bandwidth is shared)", "maxFetches",
                      parse=positive_int),
    )  # fmt: skip
    hf_endpoint: str = field(
        default="",
        metadata=flag(
            "the Hugging Face hub (or mirror) fetch Jobs read hf:// models from ($HF_ENDPOINT)", "hfEndpoint"
        ),
    )
    log_level: str = field(
        default="info", metadata=flag("log verbosity (JSON lines on stderr)", "logLevel", choices=LOG_LEVELS)
    )
    catalog_path: str | None = None  # the top-level --catalog option, shared by every command
    debounce_seconds: float = 0.3  # a burst of watch events becomes one pass
    pass_delay_seconds: float = 0.0  # tests only ($DSPOOL_TEST_PASS_DELAY_SECONDS): a slow pass on purpose

    @property
    def interconnect(self) -> Interconnect:
        """What multi-node replicas add for the site's RDMA fabric."""
        pairs = tuple((name, value) for name, _, value in (item.partition("=") for item in self.rdma_env))
        return Interconnect(rdma_resource=self.rdma_resource or None, env=pairs)

    def fetch_settings(self, image: str) -> FetchSettings | None:
        """How model-cache fetch Jobs run (``image``: the fetcher image), or None without a model cache."""
        if not self.model_cache:
            return None
        return FetchSettings(
            image=image,
            cache_dir=self.model_cache_dir,
            hf_endpoint=self.hf_endpoint,
            max_per_node=self.max_fetches_per_node,
            max_in_flight=self.max_fetches,
        )

    @property
    def rebalance_mode(self) -> RebalanceMode:
        """``rebalance`` as the enum the core uses."""
        return RebalanceMode(self.rebalance)

    @property
    def rebalance_policy(self) -> RebalancePolicy:
        """The rebalancer's limits."""
        return RebalancePolicy(
            max_moves=self.max_moves,
            max_in_flight=self.max_moves_in_flight,
            cooldown_seconds=self.rebalance_cooldown_seconds,
            ready_timeout_seconds=self.move_ready_timeout_seconds,
        )


def flag_fields() -> list[dataclasses.Field[Any]]:
    """The settings that are `dspool run` flags, in declaration order."""
    return [f for f in dataclasses.fields(OperatorSettings) if "help" in f.metadata]


def env_name(name: str) -> str:
    """The environment variable that sets a flag's default: ``DSPOOL_<FIELD>``."""
    return ENV_PREFIX + name.upper()


def _parse_env(setting: dataclasses.Field[Any], text: str) -> Any:
    meta = setting.metadata
    if meta["repeat"]:
        return [part.strip() for part in text.split(",") if part.strip()]
    if meta["boolean"]:
        if text.strip().lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(f"${env_name(setting.name)}={text!r} is not a boolean (true or false)")
        return text.strip().lower() in ("1", "true", "yes")
    if meta["choices"] and text not in meta["choices"]:
        raise ValueError(f"${env_name(setting.name)}={text!r}: choose one of {', '.join(meta['choices'])}")
    if meta["parse"] is not None:
        try:
            return meta["parse"](text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"${env_name(setting.name)}: {exc}") from None
    return text


def _default(setting: dataclasses.Field[Any], env: Mapping[str, str]) -> Any:
    if setting.default_factory is dict:  # a selector: argparse parses a string default with the flag's type
        return env.get(env_name(setting.name), "")
    if env.get(env_name(setting.name), "").strip():
        return _parse_env(setting, env[env_name(setting.name)])
    if setting.name == "lease_namespace" and env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]  # in a pod: the release namespace (downward API)
    if setting.default_factory is not dataclasses.MISSING:
        return setting.default_factory()
    return setting.default


def add_run_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    """Add one flag per setting to ``parser``; defaults from the settings, or from ``DSPOOL_<FIELD>``."""
    env = os.environ if env is None else env
    for setting in flag_fields():
        meta = setting.metadata
        flag = meta["flag"] or "--" + setting.name.replace("_", "-")
        names = [flag, meta["short"]] if meta["short"] else [flag]
        kwargs: dict[str, Any] = {"default": _default(setting, env), "help": meta["help"], "dest": setting.name}
        if not meta["boolean"] and not meta["choices"]:
            kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        if meta["repeat"]:
            kwargs["action"] = "append"
        elif meta["boolean"]:
            kwargs["action"] = argparse.BooleanOptionalAction
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        if meta["parse"] is not None:
            kwargs["type"] = meta["parse"]
        parser.add_argument(*names, **kwargs)


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> OperatorSettings:
    """The settings of a parsed `dspool run` command line."""
    env = os.environ if env is None else env
    values = {f.name: getattr(args, f.name) for f in flag_fields()}
    delay = env.get(ENV_PREFIX + "TEST_PASS_DELAY_SECONDS", "").strip()
    return OperatorSettings(
        **values, catalog_path=getattr(args, "catalog", None), pass_delay_seconds=float(delay) if delay else 0.0
    )


def chart_values() -> dict[str, str]:
    """Chart value name -> the setting it becomes (``operator.<value>`` in values.yaml)."""
    return {f.metadata["chart"]: f.name for f in flag_fields() if f.metadata["chart"]}
