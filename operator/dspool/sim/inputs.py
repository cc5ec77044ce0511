"""Input files of ``dspool simulate``: the pool (YAML, ``examples/pools/`` format) and the trace (JSON lines).

Every problem is one :class:`InputError` naming the file and the line, so the CLI prints one line.

A trace has one arrival per line, sorted by ``at``::

    {"at": 0, "lifetime": 3600, "name": "r1", "spec": {"model": "deepseek-r1", "replicas": 1}}

``spec`` is a DeepSeekDeploymentSpec exactly as in the CRD (camelCase); the DSD is deleted at
``at + lifetime``. Blank lines and lines starting with ``#`` are skipped. A name may come back once its
previous DSD has left.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dspool.api import DeepSeekDeploymentSpec
from dspool.catalog import Catalog, UnknownIdError
from dspool.sim.fleet import PoolFile

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class InputError(ValueError):
    """A malformed pool or trace file: ``path:line: message``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")


class TraceEntry(BaseModel):
    """One arrival: a DSD created at ``at`` and deleted ``lifetime`` seconds later."""

    model_config = ConfigDict(extra="forbid")

    at: float = Field(ge=0, description="seconds since the start of the trace")
    lifetime: float = Field(gt=0, description="seconds until the DSD is deleted")
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    spec: DeepSeekDeploymentSpec

    @property
    def leaves_at(self) -> float:
        """When the DSD is deleted."""
        return self.at + self.lifetime


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHOICE_ERRORS = frozenset({"literal_error", "enum"})


def _field_path(loc: Sequence[Any]) -> tuple[Any, ...]:
    """The error location without pydantic's union-member tags (``literal['auto']``, ``str-enum[...]``)."""
    return tuple(part for part in loc if isinstance(part, int) or _FIELD.match(str(part)))


def _first_error(exc: ValidationError) -> tuple[tuple[Any, ...], str]:
    """The first error's field path and message; the errors of one union field become one list of choices."""
    errors = exc.errors()
    path = _field_path(errors[0]["loc"])
    same_field = [e for e in errors if _field_path(e["loc"]) == path]
    if len(same_field) > 1 and all(e["type"] in _CHOICE_ERRORS for e in same_field):
        choices = [c for e in same_field for c in re.findall(r"'[^']*'", str(e["msg"]))]
        return path, f"Input should be one of {', '.join(choices)}"
    return path, str(errors[0]["msg"])


def parse_trace(lines: Iterable[str], path: str, catalog: Catalog) -> list[TraceEntry]:
    """Parse and check a trace: JSON per line, the fields, the spec, the model, the order, live names."""
    entries: list[TraceEntry] = []
    alive_until: dict[str, tuple[float, int]] = {}  # name -> (leaves at, line)
    previous_at = 0.0
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, number, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(data, dict):
            raise InputError(
                path, number, 'expected an object like {"at": 0, "lifetime": 60, "name": ..., "spec": ...}'
            )
        try:
            entry = TraceEntry.model_validate(data)
        except ValidationError as exc:
            loc, message = _first_error(exc)
            where = ".".join(str(part) for part in loc) or "entry"
            raise InputError(path, number, f"{where}: {message}") from None
        try:
            catalog.model(entry.spec.model)
        except UnknownIdError as exc:
            raise InputError(path, number, f"spec.model: {exc}") from None
        if entry.at < previous_at:
            raise InputError(
                path, number, f"at {entry.at:g} is before the previous arrival ({previous_at:g}); sort by at"
            )
        known = alive_until.get(entry.name)
        if known is not None and known[0] > entry.at:
            raise InputError(
                path,
                number,
                f"name {entry.name!r} is still alive (line {known[1]}, deleted at {known[0]:g}); reuse it after that",
            )
        alive_until[entry.name] = (entry.leaves_at, number)
        previous_at = entry.at
        entries.append(entry)
    return entries


def load_trace(path: str | Path, catalog: Catalog) -> list[TraceEntry]:
    """Read a trace file (see the module docstring); :class:`InputError` on the first problem."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(str(path), None, f"cannot read: {exc.strerror}") from None
    return parse_trace(text.splitlines(), str(path), catalog)


def dump_trace(entries: Sequence[TraceEntry]) -> str:
    """A trace file's text: one compact JSON object per line, in the CRD's camelCase."""
    lines = []
    for entry in entries:
        spec = entry.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        spec.setdefault("model", entry.spec.model)
        lines.append(json.dumps({"at": entry.at, "lifetime": entry.lifetime, "name": entry.name, "spec": spec}))
    return "\n".join(lines) + ("\n" if lines else "")


def _line_of(document: yaml.Node | None, loc: Sequence[Any]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (a pydantic error location), or of its nearest parent."""
    node = document
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            match = node.value[part]
        else:
            match = None
        if match is None:
            break
        node = match
        line = node.start_mark.line + 1
    return line


def load_pool_file(path: str | Path, catalog: Catalog) -> PoolFile:
    """Read a pool file (``examples/pools/`` format) and check its accelerators against the catalog."""
    name = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(name, None, f"cannot read: {exc.strerror}") from None
    try:
        document = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(name, mark.line + 1 if mark is not None else None, f"not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise InputError(name, 1, "a pool file is a mapping with `name` and `groups`")
    try:
        pool = PoolFile.model_validate(data)
    except ValidationError as exc:
        loc, message = _first_error(exc)
        where = ".".join(str(part) for part in loc) or "pool"
        raise InputError(name, _line_of(document, loc), f"{where}: {message}") from None
    for index, group in enumerate(pool.groups):
        try:
            catalog.accelerator(group.accelerator)
        except UnknownIdError as exc:
            raise InputError(name, _line_of(document, ("groups", index, "accelerator")), str(exc)) from None
    if pool.node_count == 0:
        raise InputError(name, _line_of(document, ("groups",)), "the pool has no nodes")
    return pool
