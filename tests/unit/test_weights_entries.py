"""Cache entries: one per checkpoint served, named stably and safely."""

from __future__ import annotations

from dspool.api import DeepSeekDeploymentSpec
from dspool.catalog import Precision, builtin_catalog
from dspool.weights.entries import entry_for, split_revision
from dspool.weights.state import CacheView, EntryState, NodeEntry, NodeModelCache

CATALOG = builtin_catalog()
R1 = CATALOG.model("deepseek-r1")


def spec(**fields: object) -> DeepSeekDeploymentSpec:
    return DeepSeekDeploymentSpec.model_validate({"model": "deepseek-r1", **fields})


def test_each_precision_and_source_is_its_own_entry_and_the_id_is_a_safe_name() -> None:
    fp8 = entry_for(spec(), R1, Precision.FP8)
    w8a8 = entry_for(spec(modelSource={"uri": "s3://models/r1-w8a8"}), R1, Precision.W8A8)
    bf16 = entry_for(spec(), R1, Precision.BF16)
    assert fp8 is not None and w8a8 is not None and bf16 is not None
    assert len({fp8.id, w8a8.id, bf16.id}) == 3
    assert fp8.source == "hf://deepseek-ai/DeepSeek-R1" and fp8.size_gib == 641.0
    assert fp8.id.startswith("deepseek-r1-fp8-") and len(fp8.id) <= 63
    assert entry_for(spec(), R1, Precision.FP8) == fp8  # stable: the same checkpoint, the same directory


def test_a_revision_is_part_of_the_entry_only_for_model_hubs() -> None:
    assert split_revision("hf://deepseek-ai/DeepSeek-R1@8a58a13") == ("hf://deepseek-ai/DeepSeek-R1", "8a58a13")
    assert split_revision("https://mirror.example/r1.tar") == ("https://mirror.example/r1.tar", "main")
    assert split_revision("https://user@mirror.example") == ("https://user@mirror.example", "main")
    pinned = entry_for(spec(modelSource={"uri": "hf://deepseek-ai/DeepSeek-R1@8a58a13"}), R1, Precision.FP8)
    assert pinned is not None and pinned.revision == "8a58a13"
    assert pinned.id != entry_for(spec(), R1, Precision.FP8).id  # type: ignore[union-attr]


def test_weights_the_user_manages_use_no_entry() -> None:
    assert entry_for(spec(modelSource={"pvc": {"claimName": "r1"}}), R1, Precision.FP8) is None
    assert entry_for(spec(modelSource={"hostPath": {"path": "/models/r1"}}), R1, Precision.FP8) is None


def test_the_cache_view_reports_progress_and_readiness_per_node() -> None:
    view = CacheView(
        nodes={
            "n0": NodeModelCache(
                node="n0",
                capacity_bytes=10,
                entries={
                    "a": NodeEntry(entry="a", state=EntryState.READY, size_bytes=6),
                    "b": NodeEntry(entry="b", state=EntryState.FETCHING, size_bytes=4, bytes_done=1),
                    "c": NodeEntry(entry="c", state=EntryState.MISSING, size_bytes=4),
                },
            )
        }
    )
    assert view.ready_on("n0", "a") and not view.ready_on("n0", "b") and not view.ready_on("n1", "a")
    assert [view.bytes_done("n0", e) for e in "abcd"] == [6, 1, 0, 0]
    assert view.nodes["n0"].used_bytes == 10
