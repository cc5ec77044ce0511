"""Where the MindIE pieces used to live: they are in :mod:`dspool.workloads.mindie` now.

Kept so the shell's ``from dspool.mindie import ...`` (the controller's MindCluster detection, the pod views'
device annotation) keeps working; new code imports :mod:`dspool.workloads.mindie`.
"""

from dspool.workloads.mindie import ASCEND_DEVICE_ANNOTATION, MINDCLUSTER_CRD

__all__ = ["ASCEND_DEVICE_ANNOTATION", "MINDCLUSTER_CRD"]
