"""Which engine release serves which checkpoint architecture, and dspool's default engine images (pure data).

A checkpoint is served by an engine release that knows its architecture (config.json ``architectures[0]``):
DeepSeek-V3.2's ``DeepseekV32ForCausalLM`` (DeepSeek Sparse Attention: the lightning indexer and its key
cache) needs vLLM v0.11.0, vllm-ascend v0.11.0rc0 or MindIE 3.0.0, and vLLM runs its sparse MLA kernels on
Hopper and Blackwell only. docs/sizing.md ("Engine support by version") cites each entry. An image whose tag
names no version (``:latest``, a digest, a site build) is assumed current, and the note says so.

The default images live here, below sizing, so that sizing and the workload builders
(:class:`dspool.workloads.ImageDefaults`) read the same tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dspool.backends import Backend

# dspool's engine images, by repository and tag only (the cluster's registry or mirror supplies the host).
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
DEFAULT_VLLM_ASCEND_IMAGE = "ascend/vllm-ascend:v0.11.0rc0"
DEFAULT_VLLM_ASCEND_310P_IMAGE = "ascend/vllm-ascend:v0.11.0rc0-310p"
DEFAULT_MINDIE_IMAGE = "ascendhub/mindie:2.1.RC1-800I-A2-py311-openeuler24.03-lts"
DEFAULT_MINDIE_310P_IMAGE = "ascendhub/mindie:2.1.RC1-300I-Duo-py311-openeuler24.03-lts"

DEFAULT_ENGINE_IMAGES: dict[Backend, str] = {
    Backend.VLLM: DEFAULT_VLLM_IMAGE,
    Backend.VLLM_ASCEND: DEFAULT_VLLM_ASCEND_IMAGE,
    Backend.MINDIE: DEFAULT_MINDIE_IMAGE,
}

ENGINE_NAMES: dict[Backend, str] = {Backend.VLLM: "vLLM", Backend.VLLM_ASCEND: "vllm-ascend", Backend.MINDIE: "MindIE"}


@dataclass(frozen=True)
class FirstRelease:
    """The first release of an engine that serves an architecture, and where that is written."""

    version: tuple[int, ...]
    source: str


# (architecture, backend) -> the first release serving it. Architectures missing here (DeepSeek-V3/R1/V3.1 and
# the distills' Llama/Qwen2) are older than every image dspool pins, so no version is checked for them.
FIRST_SERVING_RELEASE: dict[tuple[str, Backend], FirstRelease] = {
    ("DeepseekV32ForCausalLM", Backend.VLLM): FirstRelease(
        (0, 11, 0), "vLLM v0.11.0 added it with the DSA indexer (vllm/model_executor/models/deepseek_v2.py)"
    ),
    ("DeepseekV32ForCausalLM", Backend.VLLM_ASCEND): FirstRelease(
        (0, 11, 0), "vllm-ascend v0.11.0rc0 release notes: 'DeepSeek V3.2 is supported now' (vllm-ascend#3270)"
    ),
    ("DeepseekV32ForCausalLM", Backend.MINDIE): FirstRelease(
        (3, 0, 0), "MindIE-LLM 3.0.0 lists DeepSeek-V3.2 (32 NPUs on Atlas 800I A2); older releases: unverified"
    ),
}

# vLLM runs DeepSeek Sparse Attention with FlashMLA's sparse kernels, on Hopper (9.x) and Blackwell (10.x) only.
MIN_COMPUTE_CAPABILITY: dict[tuple[str, Backend], tuple[int, int]] = {
    ("DeepseekV32ForCausalLM", Backend.VLLM): (9, 0),
}


def image_version(image: str) -> tuple[int, ...] | None:
    """The release an image's tag names (``vllm/vllm-openai:v0.11.0`` -> (0, 11, 0),
    ``ascendhub/mindie:2.1.RC1-800I-A2-...`` -> (2, 1, 0)); None when it names none."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    if ":" not in name:
        return None
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", name.rsplit(":", 1)[1])
    if match is None:
        return None
    return tuple(int(part) for part in match.groups(default="0"))


def version_text(version: tuple[int, ...]) -> str:
    """``(0, 11, 0)`` -> ``v0.11.0``."""
    return "v" + ".".join(str(part) for part in version)


def image_engine(image: str) -> Backend | None:
    """The engine an image's repository names (``.../mindie``, ``.../vllm-ascend``, ``.../vllm-openai``), or None
    for a site build whose name says nothing."""
    repository = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0].lower()
    if "mindie" in repository:
        return Backend.MINDIE
    if "vllm-ascend" in repository or "vllm_ascend" in repository:
        return Backend.VLLM_ASCEND
    if "vllm" in repository:
        return Backend.VLLM
    return None


def image_for(backend: Backend, pinned: str | None, defaults: dict[Backend, str] | None = None) -> str:
    """The image ``backend`` runs: the pinned one when it is that engine's (or names no engine), else the default."""
    if pinned is not None and image_engine(pinned) in (backend, None):
        return pinned
    return (defaults or DEFAULT_ENGINE_IMAGES)[backend]


def engine_refusal(architecture: str | None, backend: Backend, image: str) -> str | None:
    """Why ``image`` of ``backend`` cannot serve a checkpoint of ``architecture``, or None when it can (or
    when its tag names no version: assumed current)."""
    first = FIRST_SERVING_RELEASE.get((architecture or "", backend))
    if first is None:
        return None
    version = image_version(image)
    if version is None or version >= first.version:
        return None
    engine = ENGINE_NAMES[backend]
    return (
        f"{engine} {version_text(version)} ({image}) cannot serve {architecture}: the first {engine} release that "
        f"does is {version_text(first.version)} ({first.source})"
    )


def pinned_image_refusal(architecture: str | None, backend: Backend, pinned: str) -> str | None:
    """Why ``backend`` cannot serve ``architecture`` from the image a spec pins (which every engine would run):
    the image is another engine's, or a release too old; None when it can."""
    engine = image_engine(pinned)
    if engine is not None and engine != backend:
        return f"{pinned} is a {ENGINE_NAMES[engine]} image, which {ENGINE_NAMES[backend]} cannot run"
    return engine_refusal(architecture, backend, pinned)


def hardware_refusal(
    architecture: str | None, backend: Backend, compute_capability: str | None, accelerator_id: str
) -> str | None:
    """Why ``backend`` cannot run ``architecture`` on this NVIDIA compute capability, or None."""
    minimum = MIN_COMPUTE_CAPABILITY.get((architecture or "", backend))
    if minimum is None or compute_capability is None:
        return None
    major, minor = (int(part) for part in compute_capability.split("."))
    if (major, minor) >= minimum:
        return None
    return (
        f"{ENGINE_NAMES[backend]} runs {architecture}'s sparse attention with FlashMLA's sparse kernels on Hopper "
        f"and Blackwell only (compute capability >= {minimum[0]}.{minimum[1]}); {accelerator_id} is "
        f"{compute_capability}"
    )
