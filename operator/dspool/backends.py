"""The serving engines dspool runs (a leaf module: sizing, layouts and the builders all name them)."""

from __future__ import annotations

from enum import StrEnum


class Backend(StrEnum):
    """Serving engines dspool can run."""

    VLLM = "vllm"
    MINDIE = "mindie"
    VLLM_ASCEND = "vllm-ascend"
