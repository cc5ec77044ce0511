"""kubectl's habits for ``dspool`` and ``kubectl dspool``: the flags, the output formats and one-line errors.

- Every subcommand that reads a cluster takes ``--kubeconfig`` and ``--context`` (a context of that
  kubeconfig instead of its current one); those that read DeepSeekDeployments take ``-n/--namespace`` and
  ``-A/--all-namespaces`` (the default: dspool's pool is cluster-wide, as ``kubectl get nodes`` is).
- ``-o table|wide|json|yaml`` wherever there is output: ``yaml`` is the ``json`` document as YAML, ``wide`` the
  table with everything (``dspool pool -o wide`` lists every node, as ``--nodes`` does).
- An API error is one line with the status and reason (``dspool: error: the API server refused: 403
  Forbidden: nodes is forbidden: ...``), an unreachable API server one line with its address; exit status 1.
  No traceback reaches the terminal, whatever fails.

:func:`apply` adds the flags to the parser ``dspool.cli`` builds (a subcommand with ``--kubeconfig`` reads a
cluster) and :func:`run_handler` runs a subcommand with the output conversion and the error handling.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import yaml

OUTPUTS = ("table", "wide", "json", "yaml")
EXIT_ERROR = 1
NAMESPACED = frozenset({"pool", "rebalance"})  # subcommands whose listing can be limited to a namespace


def apply(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add --context (and -n/-A where DSDs are listed) beside every --kubeconfig; widen every -o to OUTPUTS."""
    for name, parser in subparsers.choices.items():
        options = {option: action for action in parser._actions for option in action.option_strings}
        output = options.get("--output")
        if output is not None and output.choices is not None and "table" in output.choices:  # not render's
            output.choices = list(OUTPUTS)
            output.help = "output format: table, wide (every column and row), json or yaml"
        if "--kubeconfig" in options and "--context" not in options:
            parser.add_argument("--context", help="the kubeconfig context to use (default: its current context)")
        if name in NAMESPACED and "--namespace" not in options:
            scope = parser.add_mutually_exclusive_group()
            scope.add_argument("-n", "--namespace", help="only DeepSeekDeployments of this namespace")
            scope.add_argument("-A", "--all-namespaces", action="store_true",
                               help="DeepSeekDeployments of every namespace (the default)")  # fmt: skip


def describe_error(error: BaseException) -> str:
    """One line for an error talking to the cluster: the status and reason, or where it could not connect."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError, MaxRetryError

    if isinstance(error, ApiException):
        if error.status == 0:  # the client's own wrapping of a TLS failure
            return f"cannot talk to the API server: {str(error.reason).splitlines()[0]}"
        try:
            body = json.loads(error.body or "{}")
        except ValueError:
            body = {}
        message = body.get("message") or ""
        reason = body.get("reason") or error.reason or ""
        return f"the API server refused: {error.status} {reason}" + (f": {message}" if message else "")
    if isinstance(error, MaxRetryError):
        url = f"{error.pool.scheme}://{error.pool.host}:{error.pool.port}" if error.pool is not None else "?"
        cause = error.reason
        why = str(cause).rsplit(": ", 1)[-1] if cause is not None else "no answer"
        if "refused" in why.lower():
            why = "connection refused"
        return f"cannot reach the API server at {url}: {why} (is the cluster up? check --kubeconfig/--context)"
    if isinstance(error, ConfigException):
        return f"no usable kubeconfig: {error} (set KUBECONFIG or pass --kubeconfig; --context picks a context)"
    if isinstance(error, HTTPError | OSError):
        return f"cannot reach the API server: {error}"
    return f"{type(error).__name__}: {error}"


def _reformat(text: str, output: str) -> str:
    if output != "yaml":
        return text
    document = json.loads(text)
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True).rstrip("\n")


def run_handler(handler: Callable[[argparse.Namespace, Any], int], args: argparse.Namespace, catalog: Any) -> int:
    """Run one subcommand: ``-o yaml`` converts its JSON, ``-o wide`` is its table with everything; errors
    talking to the cluster become one line and exit status 1."""
    output = getattr(args, "output", None)
    if output == "wide":
        args.output = "table"
        if hasattr(args, "nodes"):
            args.nodes = True
    try:
        if output == "yaml":
            args.output = "json"
            captured = io.StringIO()
            with contextlib.redirect_stdout(captured):
                status = handler(args, catalog)
            if captured.getvalue().strip():
                print(_reformat(captured.getvalue(), "yaml"))
            return status
        return handler(args, catalog)
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as error:  # the point: nothing reaches the user as a traceback
        if _is_usage_error(error):
            raise
        print(f"dspool: error: {describe_error(error)}", file=sys.stderr)
        return EXIT_ERROR


def _is_usage_error(error: BaseException) -> bool:
    """Errors dspool.cli reports itself (bad input, exit 2)."""
    return type(error).__name__ in ("UsageError", "UnknownIdError", "CatalogError")


def namespace_filter(args: argparse.Namespace) -> str | None:
    """The namespace ``-n`` asks for; None for every namespace (``-A`` or neither)."""
    if getattr(args, "all_namespaces", False):
        return None
    namespace: str | None = getattr(args, "namespace", None)
    return namespace or None


class ConnectionErrorsInOneLine(logging.Filter):
    """For ``dspool run``'s log: an unreachable or refusing API server is logged as its one-line message,
    without the exception's traceback (the operator retries; the traceback says nothing more)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the traceback of API and connection errors; keep the record."""
        if record.exc_info and record.exc_info[1] is not None and _is_connection_error(record.exc_info[1]):
            record.msg = f"{record.getMessage()} ({describe_error(record.exc_info[1])})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _is_connection_error(error: BaseException) -> bool:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return isinstance(error, ApiException | HTTPError | ConnectionError)


def quiet_connection_tracebacks() -> None:
    """Install :class:`ConnectionErrorsInOneLine` on every handler of the root logger."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(ConnectionErrorsInOneLine())
