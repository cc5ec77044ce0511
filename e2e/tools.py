#!/usr/bin/env python3
"""Tools the tests need that have no Debian or PyPI package, built from pinned Go modules and cached.

    python e2e/tools.py build helm          # or: prometheus, lws, all
    python e2e/tools.py path helm           # print the binary's path (building it first if needed)
    python e2e/tools.py crds prometheus-operator   # print the directory holding its CRD manifests

Each tool has a small Go module under ``e2e/tools/<tool>/`` (``go.mod`` + ``go.sum`` pin every
dependency, ``tools.go`` names the commands). Binaries land in the same cache as the control plane
(``$DSPOOL_CACHE`` or ``~/.cache/dspool``) under ``tools/<tool>-<version>/``; a stamp over the module
files and the Go version makes a warm build a no-op. Like e2e/cluster.py (which shares its cache and
lock through e2e/buildcache.py) it needs only the standard library and the ``go`` command.

The prometheus-operator module is not built: its CRDs (ServiceMonitor, PodMonitor, PrometheusRule) are
read from the module's source, fetched through the Go module proxy at the pinned version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from buildcache import GO_BUILD_PARALLELISM, ClusterError, cache_root, exclusive_lock, go_command

TOOLS_DIR = Path(__file__).resolve().parent / "tools"


@dataclass(frozen=True)
class Tool:
    """One upstream Go module and the commands built from it."""

    module: str
    version: str
    commands: dict[str, str] = field(default_factory=dict)  # binary name -> package
    ldflags: str = "-s -w"
    tags: str = ""  # Go build tags


TOOLS: dict[str, Tool] = {
    "helm": Tool(
        "helm.sh/helm/v3",
        "v3.22.0",
        {"helm": "helm.sh/helm/v3/cmd/helm"},
        # `go build` stamps neither the release nor the Kubernetes version helm assumes offline (helm
        # template, lint); helm's own Makefile sets both. Without them `helm version` says v3.22 and
        # `helm template` renders for Kubernetes v1.20, below the chart's kubeVersion.
        "-s -w -X helm.sh/helm/v3/internal/version.version=v3.22.0"
        " -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"
        " -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37",
    ),
    "prometheus": Tool(
        "github.com/prometheus/prometheus",
        "v0.316.0",
        {
            "prometheus": "github.com/prometheus/prometheus/cmd/prometheus",
            "promtool": "github.com/prometheus/prometheus/cmd/promtool",
        },
        # Prometheus's own switch (plugins/*.go) that leaves out every service discovery but file and
        # http: the tests scrape static targets (1,284 packages to compile instead of 1,527).
        tags="remove_all_sd",
    ),
    "lws": Tool(
        "sigs.k8s.io/lws",
        "v0.7.0",
        {"lws-controller": "sigs.k8s.io/lws/cmd"},
        "-s -w -X sigs.k8s.io/lws/pkg/version.GitVersion=v0.7.0",
    ),
}
# Source-only modules: fetched for their manifests, never built.
SOURCES: dict[str, tuple[str, str]] = {
    "prometheus-operator": ("github.com/prometheus-operator/prometheus-operator", "v0.85.0"),
    "lws": ("sigs.k8s.io/lws", "v0.7.0"),
}


def tool_dir(name: str) -> Path:
    """The cache directory of one tool at its pinned version."""
    tool = TOOLS[name]
    return cache_root() / "tools" / f"{name}-{tool.version}"


def fingerprint(name: str, go: str) -> str:
    """Hash of what decides the binaries: the module files, the Go version and the build flags."""
    digest = hashlib.sha256()
    for file in ("go.mod", "go.sum", "tools.go"):
        digest.update((TOOLS_DIR / name / file).read_bytes())
    digest.update(subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout.encode())
    digest.update(json.dumps([TOOLS[name].commands, TOOLS[name].ldflags, TOOLS[name].tags]).encode())
    return digest.hexdigest()


def is_built(name: str, go: str) -> bool:
    """Whether every command of the tool exists and was built from the current module files."""
    stamp = tool_dir(name) / "stamp"
    if not stamp.exists() or not all((tool_dir(name) / "bin" / c).exists() for c in TOOLS[name].commands):
        return False
    return stamp.read_text().strip() == fingerprint(name, go)


def build(name: str) -> Path:
    """Build one tool into the cache unless a matching build is there; return its bin directory."""
    go = go_command()
    tool = TOOLS[name]
    bin_dir = tool_dir(name) / "bin"
    with exclusive_lock(f"tool-{name}"):
        if is_built(name, go):
            return bin_dir
        started = time.monotonic()
        bin_dir.mkdir(parents=True, exist_ok=True)
        (tool_dir(name) / "stamp").unlink(missing_ok=True)
        print(f"building {', '.join(tool.commands)} ({tool.module} {tool.version}); once, then cached", flush=True)
        env = dict(os.environ, GOFLAGS="-buildvcs=false")
        output = f"{bin_dir}/" if len(tool.commands) > 1 else str(bin_dir / next(iter(tool.commands)))
        command = [go, "build", "-p", GO_BUILD_PARALLELISM, "-trimpath", f"-ldflags={tool.ldflags}", "-o", output]
        if tool.tags:
            command.insert(2, f"-tags={tool.tags}")
        subprocess.run([*command, *tool.commands.values()], cwd=TOOLS_DIR / name, env=env, check=True)
        (tool_dir(name) / "stamp").write_text(fingerprint(name, go) + "\n")
        print(f"built {name} into {bin_dir} in {time.monotonic() - started:.0f}s", flush=True)
        return bin_dir


def binary(command: str) -> Path:
    """The path of a built command (``helm``, ``prometheus``, ``promtool``), building its tool if needed."""
    for name, tool in TOOLS.items():
        if command in tool.commands:
            return build(name) / command
    raise ClusterError(f"no tool builds {command!r}; known: {', '.join(c for t in TOOLS.values() for c in t.commands)}")


def source_dir(name: str) -> Path:
    """The unpacked source of a source-only module at its pinned version (downloaded through the proxy)."""
    module, version = SOURCES[name]
    scratch = cache_root() / "tools" / "go-download"
    scratch.mkdir(parents=True, exist_ok=True)
    if not (scratch / "go.mod").exists():
        (scratch / "go.mod").write_text("module dspool.local/tools/download\n\ngo 1.26.0\n")
    done = subprocess.run(
        [go_command(), "mod", "download", "-json", f"{module}@{version}"],
        cwd=scratch,
        capture_output=True,
        text=True,
        env=dict(os.environ, GOFLAGS="-mod=mod"),
    )
    try:
        info = json.loads(done.stdout)
    except ValueError:
        raise ClusterError(f"go mod download {module}@{version} failed: {done.stderr.strip()}") from None
    if info.get("Error") or done.returncode != 0:
        raise ClusterError(f"go mod download {module}@{version} failed: {info.get('Error') or done.stderr.strip()}")
    return Path(info["Dir"])


PROMETHEUS_OPERATOR_CRDS = (
    "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
    "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
)


def prometheus_operator_crds() -> list[Path]:
    """The ServiceMonitor, PodMonitor and PrometheusRule CRD manifests of the pinned prometheus-operator."""
    root = source_dir("prometheus-operator")
    return [root / path for path in PROMETHEUS_OPERATOR_CRDS]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build a tool (or all) into the cache")
    p_build.add_argument("tool", choices=[*TOOLS, "all"])
    p_path = sub.add_parser("path", help="print a command's path, building it if needed")
    p_path.add_argument("binary")
    p_crds = sub.add_parser("crds", help="print the CRD manifests of a source-only module")
    p_crds.add_argument("source", choices=["prometheus-operator"])
    options = parser.parse_args(argv)
    try:
        if options.command == "build":
            for name in TOOLS if options.tool == "all" else [options.tool]:
                print(build(name))
        elif options.command == "path":
            print(binary(options.binary))
        else:
            for path in prometheus_operator_crds():
                print(path)
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"error: {' '.join(map(str, error.cmd))} exited with {error.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
