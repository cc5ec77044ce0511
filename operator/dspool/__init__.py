"""dspool: run DeepSeek models on a pooled cluster of NVIDIA GPUs and Huawei Ascend NPUs."""

__version__ = "0.1.0"
