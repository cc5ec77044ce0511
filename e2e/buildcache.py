"""What e2e/cluster.py and e2e/tools.py share to build pinned Go modules into dspool's cache.

The cache directory (``$DSPOOL_CACHE`` or ``$XDG_CACHE_HOME/dspool``, default ``~/.cache/dspool``), the lock
that serialises builds (and cluster up/down) across processes, the ``go`` command, and the error a person
can act on. Standard library only, like both scripts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

# Two cores: more parallel compile jobs only add memory pressure.
GO_BUILD_PARALLELISM = "2"


class ClusterError(RuntimeError):
    """A failure a person can act on; the message says what went wrong and where to look."""


def cache_root() -> Path:
    """Return dspool's cache directory, honouring DSPOOL_CACHE and XDG_CACHE_HOME."""
    if os.environ.get("DSPOOL_CACHE"):
        return Path(os.environ["DSPOOL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "dspool"


def go_command() -> str:
    """Return the path of the go command, or fail saying how to get one."""
    go = shutil.which("go")
    if not go:
        raise ClusterError("the `go` command is not on PATH; install Go >= 1.26 to build the control plane")
    return go


@contextlib.contextmanager
def exclusive_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock file in the cache dir (e.g. `make cluster-up` racing a test session)."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
