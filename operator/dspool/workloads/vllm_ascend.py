"""vllm-ascend: vLLM on Ascend NPUs (910B, 310P), what it needs beyond vLLM on GPUs.

The objects are vLLM's (:mod:`dspool.workloads.vllm` builds them for both backends) with the Ascend driver
mounted from the host (:func:`dspool.workloads.common.add_ascend_host_mounts`) and the images
``vllm_ascend`` / ``vllm_ascend_310p`` of :class:`dspool.workloads.common.ImageDefaults`.
"""

from __future__ import annotations

from dspool.api import ReplicaPlacement
from dspool.catalog import AcceleratorSpec, Precision
from dspool.sizing import Backend
from dspool.workloads.common import ASCEND_310P_ARCHITECTURE


def ascend_serve_args(placement: ReplicaPlacement, accelerator: AcceleratorSpec) -> list[str]:
    """The ``vllm serve`` arguments an Ascend replica adds: ``--quantization ascend`` for vllm-ascend's W8A8
    (ModelSlim) checkpoints, ``--dtype float16`` on the 310P; none on NVIDIA."""
    args: list[str] = []
    if placement.backend == Backend.VLLM_ASCEND and placement.precision == Precision.W8A8:
        args += ["--quantization", "ascend"]
    if accelerator.architecture == ASCEND_310P_ARCHITECTURE:
        args += ["--dtype", "float16"]  # the 310P computes in FP16, not BF16
    return args
