"""Hypothesis-generated DeepSeekDeployments through the real API server, with the operator running.

- Invalid specs (a valid one with one field broken) are rejected by the CRD's schema and CEL rules with a
  422 whose message names the field.
- Valid specs (the CRD's constraints and CEL rules respected; models and accelerator ids sometimes unknown
  to the catalog, sizes sometimes absurd) are accepted, and with ``dspool run`` watching them the operator
  survives every one (still running, no traceback in its log) and leaves none looping on a permanent error
  without saying so: each DSD gets a status for its generation, and one the operator keeps failing on has
  phase Failed or a condition naming the problem.

Examples are derandomized (same examples every run) and few, to keep CI short.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from conftest import OperatorProcess, PoolOf, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dspool import api
from dspool.catalog import builtin_catalog

CATALOG = builtin_catalog()
NVIDIA_TYPES = sorted(a for a in CATALOG.accelerator_ids if not a.lower().startswith("ascend"))
ASCEND_TYPES = sorted(a for a in CATALOG.accelerator_ids if a.lower().startswith("ascend"))
EXAMPLES = settings(
    max_examples=30, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
# Reasons of ordinary life: a DSD the operator keeps failing on must carry another one (or be Failed).
ORDINARY_REASONS = {"Placed", "ReplicasReady", "ReplicasNotReady", "Unschedulable", "WithinBounds", "Limited",
                    "MovesInFlight", "Possible", "NoPlan"}  # fmt: skip

SMALL_MODELS = ["deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-llama-8b"]
ids = st.from_regex(r"\A[a-z0-9][a-z0-9.\-]{0,20}\Z")
unknown_model = ids.filter(lambda m: m not in CATALOG.model_ids)
quantity_cpu = st.from_regex(r"\A[1-9][0-9]{0,2}(\.[0-9])?m?\Z")
quantity_memory = st.from_regex(r"\A[1-9][0-9]{0,3}(Gi|Mi|G|M)?\Z")


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A spec the CRD accepts: vendor, backend, precision and accelerator types kept consistent (CEL)."""
    family = draw(st.sampled_from(["any", "nvidia", "ascend"]))
    spec: dict[str, Any] = {
        # Mostly small models, so that most DSDs are placed and their workloads written.
        "model": draw(
            st.one_of(st.sampled_from(SMALL_MODELS), st.sampled_from(sorted(CATALOG.model_ids)), unknown_model)
        ),
    }
    if draw(st.booleans()):
        spec["replicas"] = draw(st.one_of(st.integers(0, 2), st.just(256)))
    if family == "nvidia":
        backend, precisions = st.sampled_from(["auto", "vllm"]), ["auto", "fp8", "bf16", "w8a8", "w8a16"]
        types = st.lists(st.one_of(st.sampled_from(NVIDIA_TYPES), ids.filter(lambda t: not t.startswith("ascend"))),
                         min_size=1, max_size=3)  # fmt: skip
    elif family == "ascend":
        backend, precisions = st.sampled_from(["auto", "mindie", "vllm-ascend"]), ["auto", "bf16", "w8a8", "w8a16"]
        types = st.lists(st.sampled_from(ASCEND_TYPES), min_size=1, max_size=2)
    else:
        backend, precisions = st.just("auto"), ["auto", "fp8", "bf16", "w8a8"]
        types = st.just([])
    if draw(st.booleans()):
        spec["backend"] = draw(backend)
    if draw(st.booleans()):
        spec["precision"] = draw(st.sampled_from(precisions))
    placement: dict[str, Any] = {}
    accelerator_types = draw(types)
    if accelerator_types:
        placement["acceleratorTypes"] = accelerator_types
    if draw(st.booleans()):
        placement["strategy"] = draw(st.sampled_from(["binpack", "spread"]))
    if draw(st.booleans()):
        placement["allowMultiNode"] = draw(st.booleans())
    if draw(st.booleans()):
        placement["rebalance"] = draw(st.sampled_from(["Allowed", "Never"]))
    if placement:
        spec["placement"] = placement
    if draw(st.booleans()):
        serving: dict[str, Any] = {}
        if draw(st.booleans()):
            kv = draw(st.integers(1, 10_000_000))
            serving["kvCacheTokens"] = kv
            if draw(st.booleans()):
                serving["maxModelLen"] = draw(st.integers(1, kv))
        if draw(st.booleans()):
            serving["gpuMemoryUtilization"] = draw(st.floats(0.05, 1.0))
        if draw(st.booleans()):
            serving["extraArgs"] = draw(st.lists(st.text(max_size=12), max_size=3))
        if draw(st.booleans()):
            requests = {"cpu": draw(quantity_cpu), "memory": draw(quantity_memory)}
            serving["resources"] = {"requests": requests, "limits": dict(requests)}  # requests within limits
        if draw(st.booleans()):
            names = st.one_of(st.sampled_from(["HF_HOME", "X"]), st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,10}\Z"))
            entries = st.fixed_dictionaries({"name": names, "value": st.text(max_size=8)})
            serving["env"] = draw(st.lists(entries, max_size=3, unique_by=lambda e: e["name"]))
        spec["serving"] = serving
    if draw(st.booleans()):
        low = draw(st.integers(0, 4))
        spec["scaling"] = {"minReplicas": low, "maxReplicas": draw(st.integers(low, 8))}
    if draw(st.booleans()):
        spec["modelSource"] = draw(st.sampled_from([
            {"uri": "hf://deepseek-ai/DeepSeek-R1"}, {"hostPath": {"path": "/models/r1"}},
            {"pvc": {"claimName": "weights"}, "mountPath": "/weights"},
        ]))  # fmt: skip
    return spec


def _set(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of spec with the dotted path set."""
    import copy

    result = copy.deepcopy(spec)
    target = result
    keys = path.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value
    return result


# (what to break, how: a strategy of the bad value, the text the API server's message must contain)
BREAKAGES: list[tuple[str, st.SearchStrategy[Any], str]] = [
    ("replicas", st.one_of(st.integers(max_value=-1), st.integers(min_value=257)), "spec.replicas"),
    ("replicas", st.text(min_size=1, max_size=5), "spec.replicas"),
    ("model", st.one_of(st.just(""), st.from_regex(r"\A[-._][a-z]{1,5}\Z"), st.text("abc", min_size=64, max_size=70)),
     "spec.model"),
    ("precision", st.sampled_from(["int4", "fp16", "FP8", "", "auto "]), "spec.precision"),
    ("backend", st.sampled_from(["tgi", "sglang", "VLLM", ""]), "spec.backend"),
    ("placement.strategy", st.sampled_from(["random", "pack", ""]), "spec.placement.strategy"),
    ("placement.acceleratorTypes", st.lists(st.from_regex(r"\A[_ /][a-z]{1,4}\Z"), min_size=1, max_size=1),
     "spec.placement.acceleratorTypes[0]"),
    ("placement.rebalance", st.sampled_from(["always", "never", ""]), "spec.placement.rebalance"),
    ("placement.tolerations", st.just([{"operator": "Maybe"}]), "spec.placement.tolerations[0].operator"),
    ("serving.gpuMemoryUtilization", st.one_of(st.floats(max_value=0, allow_nan=False, allow_infinity=False),
                                               st.floats(min_value=1.01, max_value=100)),
     "spec.serving.gpuMemoryUtilization"),
    ("serving.kvCacheTokens", st.one_of(st.integers(max_value=0), st.integers(min_value=10_000_001)),
     "spec.serving.kvCacheTokens"),
    ("serving.env", st.just([{"name": "1BAD NAME"}]), "spec.serving.env[0].name"),
    ("serving.env", st.just([{"name": "X", "value": "1"}, {"name": "X", "value": "2"}]), "names must be unique"),
    ("serving.resources", st.just({"requests": {"cpu": "4"}, "limits": {"cpu": "1"}}),
     "requests.cpu must not exceed limits.cpu"),
    ("serving.resources", st.just({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}),
     "requests.memory must not exceed limits.memory"),
    ("serving.image", st.sampled_from([" engine", "engine image", "engine\t"]), "spec.serving.image"),
    ("serving.resources", st.just({"requests": {"cpu": "lots"}}), "spec.serving.resources.requests.cpu"),
    ("serving.resources", st.just({"limits": {"memory": "1 GB"}}), "spec.serving.resources.limits.memory"),
    ("modelSource", st.just({"uri": "ftp://weights"}), "spec.modelSource.uri"),
    ("modelSource", st.just({"uri": "hf://a/b", "hostPath": {"path": "/d"}}), "modelSource"),
    ("modelSource", st.just({"hostPath": {"path": "relative"}}), "spec.modelSource.hostPath.path"),
    ("scaling", st.just({"minReplicas": 5, "maxReplicas": 2}), "scaling.minReplicas"),
    ("scaling.maxReplicas", st.integers(min_value=257), "spec.scaling.maxReplicas"),
    ("unknownField", st.just(1), "unknownField"),
]  # fmt: skip


@st.composite
def broken_specs(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """A valid spec with one field broken: (spec, path broken, text the rejection must name)."""
    spec = draw(valid_specs())
    path, values, expected = draw(st.sampled_from(BREAKAGES))
    return _set(spec, path, draw(values)), path, expected


@st.composite
def cel_breakages(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """Specs that break a cross-field (CEL) rule."""
    model = draw(st.sampled_from(sorted(CATALOG.model_ids)))
    kind = draw(st.sampled_from(["ascend-backend-on-nvidia", "vllm-on-ascend", "fp8-on-ascend-types",
                                 "fp8-ascend-backend", "max-model-len"]))  # fmt: skip
    if kind == "ascend-backend-on-nvidia":
        spec = {
            "model": model,
            "backend": draw(st.sampled_from(["mindie", "vllm-ascend"])),
            "placement": {"acceleratorTypes": draw(st.lists(st.sampled_from(NVIDIA_TYPES), min_size=1))},
        }
        return spec, kind, "placement.acceleratorTypes"
    if kind == "vllm-on-ascend":
        spec = {
            "model": model,
            "backend": "vllm",
            "placement": {"acceleratorTypes": draw(st.lists(st.sampled_from(ASCEND_TYPES), min_size=1))},
        }
        return spec, kind, "acceleratorTypes"
    if kind == "fp8-on-ascend-types":
        spec = {
            "model": model,
            "precision": "fp8",
            "placement": {"acceleratorTypes": draw(st.lists(st.sampled_from(ASCEND_TYPES), min_size=1))},
        }
        return spec, kind, "precision fp8"
    if kind == "fp8-ascend-backend":
        return (
            {"model": model, "precision": "fp8", "backend": draw(st.sampled_from(["mindie", "vllm-ascend"]))},
            kind,
            "precision fp8",
        )
    kv = draw(st.integers(1, 100_000))
    spec = {"model": model, "serving": {"kvCacheTokens": kv, "maxModelLen": draw(st.integers(kv + 1, 10_000_000))}}
    return spec, kind, "serving.maxModelLen"  # fmt: skip


def create(custom: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """Create a DSD with strict field validation (as ``kubectl apply`` does by default)."""
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}
    custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, body,
                                           field_validation="Strict")  # fmt: skip


def test_invalid_specs_are_rejected_with_a_message_naming_the_field(
    custom: client.CustomObjectsApi, namespace: str, crd_installed: None
) -> None:
    counter = iter(range(10_000))
    accepted: list[str] = []

    def rejected(case: tuple[dict[str, Any], str, str]) -> None:
        spec, path, expected = case
        name = f"bad-{next(counter)}"
        try:
            create(custom, namespace, name, spec)
        except ApiException as exc:
            assert exc.status in (400, 422), (path, spec, exc.status, exc.body)  # 400: unknown field (Strict)
            assert expected in exc.body, f"rejection of {path} does not name {expected!r}: {exc.body}"
            return
        accepted.append(f"{path}: {spec}")
        custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)

    EXAMPLES(given(st.one_of(broken_specs(), cel_breakages()))(rejected))()
    assert not accepted, "accepted by the API server although invalid:\n" + "\n".join(accepted)


def test_valid_specs_never_crash_the_operator_or_loop_without_a_reason(
    pool_of: PoolOf, custom: client.CustomObjectsApi, namespace: str, kubeconfig: str, tmp_path: Any,
    crd_installed: None,
) -> None:  # fmt: skip
    pool = pool_of("fuzz", """
        - {name: h100, count: 2, accelerator: H100-80G, labels: {dspool.io/fabric: ib-1}}
        - {name: l20, count: 2, accelerator: L20-48G}
        - {name: rtx, count: 2, accelerator: RTX4090-24G}
        - {name: a2, count: 1, accelerator: Ascend910B3}
    """)  # fmt: skip
    operator = OperatorProcess(kubeconfig, namespace, pool.name, tmp_path / "operator.log")
    operator.start()
    names: list[str] = []
    rejected: list[str] = []
    counter = iter(range(10_000))

    def accepted(spec: dict[str, Any]) -> None:
        name = f"ok-{next(counter)}"
        try:
            create(custom, namespace, name, spec)
        except ApiException as exc:
            rejected.append(f"{spec}: {exc.status} {exc.body}")
            return
        names.append(name)

    try:
        EXAMPLES(given(valid_specs())(accepted))()
        assert not rejected, "valid specs rejected by the API server:\n" + "\n".join(rejected)

        def all_have_a_status() -> bool:
            items = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]
            return len(items) == len(names) and all(
                (i.get("status") or {}).get("observedGeneration") == i["metadata"]["generation"]
                and (i.get("status") or {}).get("phase")
                for i in items
            )

        wait_for(all_have_a_status, 120, "a status for every fuzzed DSD")
        time.sleep(10)  # a few more passes: a permanent error shows as repeated failures in the log
        assert operator.process is not None and operator.process.poll() is None, operator.log_tail()
        log = operator.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[log.index("Traceback") - 500 : log.index("Traceback") + 3000]
        failing = Counter(re.findall(rf"(?:reconciling|writing objects of) {namespace}/([\w.-]+) failed", log))
        items = {
            i["metadata"]["name"]: i
            for i in custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]
        }
        print(
            "phases:", Counter((i.get("status") or {}).get("phase") for i in items.values()), "failing:", dict(failing)
        )
        silent = []
        for name, failures in failing.items():
            status = items[name].get("status") or {}
            conditions = status.get("conditions") or []
            said = status.get("phase") == "Failed" or any(
                c.get("reason") and c["reason"] not in ORDINARY_REASONS for c in conditions
            )
            if failures >= 2 and not said:
                first = next(line for line in log.splitlines() if f"{namespace}/{name} failed" in line)
                silent.append(f"{name} ({failures} failures, phase {status.get('phase')}): "
                              f"spec {items[name]['spec']}\n    {first[:400]}")  # fmt: skip
        assert not silent, "DSDs the operator keeps failing on, with no condition saying so:\n" + "\n".join(silent)
    finally:
        operator.stop()
