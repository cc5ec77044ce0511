"""Every flag and config key the builders generate is in docs/workloads.md's table of documented ones."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from test_workloads import build, make_dsd, make_placement

from dspool.workloads.mindie import build_mindie_config

DOC = (Path(__file__).resolve().parents[2] / "docs" / "workloads.md").read_text()
SECTION = DOC[DOC.index("## Engine arguments, checked") : DOC.index("## Images")]
DOCUMENTED_FLAGS = set(re.findall(r"`(--[a-z0-9-]+)", SECTION))
DOCUMENTED_KEYS = {key for row in re.findall(r"^\| `?[A-Za-z\[\] ]+`? \| (.*) \|$", SECTION, re.M)
                   for key in re.findall(r"`([A-Za-z0-9]+)`", row)}  # fmt: skip

CASES = [
    ("vllm single node, FP8", "H200-141G", ["a"], dict(precision="fp8")),
    ("vllm multi-node (Ray, StatefulSets)", "H100-80G", ["a", "b"], dict(precision="fp8")),
    ("vllm FP8 of a BF16 checkpoint", "H100-80G", ["a"],
     dict(precision="fp8", model="deepseek-r1-distill-qwen-7b", tp=1)),
    ("vllm w8a16 on Ampere", "A100-80G", ["a", "b"], dict(precision="w8a16")),
    ("vllm-ascend W8A8", "Ascend910B3", ["a", "b"], dict(precision="w8a8", backend="vllm-ascend")),
    ("vllm-ascend 310P", "Ascend310P", ["a"], dict(precision="bf16", backend="vllm-ascend",
                                                    model="deepseek-r1-distill-qwen-7b", tp=2)),
    ("mindie", "Ascend910B3", ["a", "b"], dict(precision="w8a8", backend="mindie")),
    ("vllm FP8 KV cache and MTP", "H200-141G", ["a"],
     dict(precision="fp8", serving={"kvCacheDtype": "fp8", "speculativeDecoding": {"numSpeculativeTokens": 1}})),
    ("vllm data-expert over two nodes", "H100-80G", ["a", "b"],
     dict(precision="fp8", tp=1, dp=16, serving={"parallelism": "data-expert"})),
]  # fmt: skip


def generated_flags(objects: list[dict[str, Any]]) -> set[str]:
    """Flags of every container's args and of the commands inside its shell scripts."""
    flags: set[str] = set()

    def containers(obj: Any) -> list[dict[str, Any]]:
        found = []
        if isinstance(obj, dict):
            if "containers" in obj:
                found += obj["containers"]
            for value in obj.values():
                found += containers(value)
        elif isinstance(obj, list):
            for item in obj:
                found += containers(item)
        return found

    for container in containers(objects):
        words = list(container.get("args") or [])
        for part in [*(container.get("command") or []), *words]:
            if "\n" in part or " " in part:  # a script: its lines' words
                for line in part.splitlines():
                    words += shlex.split(line, comments=True) if line.strip() else []
        flags |= {word.split("=", 1)[0] for word in words if word.startswith("--")}
    return flags


@pytest.mark.parametrize(("case", "accelerator", "nodes", "options"), CASES, ids=[c[0] for c in CASES])
def test_generated_engine_flags_are_documented_for_the_pinned_versions(
    case: str, accelerator: str, nodes: list[str], options: dict[str, Any]
) -> None:
    model = options.pop("model", "deepseek-r1")
    serving = options.pop("serving", {})
    placement = make_placement(accelerator, nodes, **options)
    flags = generated_flags(build(make_dsd(model=model, serving=serving), placement, model, lws=False))
    flags |= generated_flags(build(make_dsd(model=model, serving=serving), placement, model, lws=True))
    assert flags or options.get("backend") == "mindie", case  # MindIE takes no flags: config.json below
    assert flags <= DOCUMENTED_FLAGS, f"{case}: undocumented {sorted(flags - DOCUMENTED_FLAGS)}"


def test_generated_mindie_config_keys_are_documented() -> None:
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                keys.add(key)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for multi_node in (False, True):
        config = build_mindie_config(model_name="m", weight_path="/m", tensor_parallel=8, max_model_len=4096,
                                     multi_node=multi_node)  # fmt: skip
        walk(json.loads(json.dumps(config)))
    assert keys <= DOCUMENTED_KEYS, f"undocumented config.json keys: {sorted(keys - DOCUMENTED_KEYS)}"


def test_an_undocumented_flag_would_be_caught() -> None:
    assert "--enable-prefix-caching" not in DOCUMENTED_FLAGS  # so a builder adding it fails the test above
