"""Weights where the replicas run: what a node model cache holds (:mod:`.entries`), what each node's cache is
known to hold (:mod:`.state`), and how long a replica waits for its weights (:mod:`.estimate`).

Pure: the fetch itself is :mod:`.fetch` (run inside a fetch Job on the node), and the operator's side reads
and writes the cache state through the shell.
"""
