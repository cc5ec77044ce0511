"""Label selectors: one matcher for every selector dspool reads. Pure.

A PodDisruptionBudget's ``spec.selector`` is a ``metav1.LabelSelector`` (``matchLabels`` and
``matchExpressions``); ``--node-selector`` is a plain map from :func:`dspool.views.parse_selector` (``k=v``, or
``k`` alone for "the label exists"), which :func:`equality_selector` turns into a LabelSelector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def selector_selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels, matchExpressions) against labels; an empty selector selects all."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def equality_selector(plain: Mapping[str, str]) -> dict[str, Any]:
    """A plain ``{key: value}`` map as a LabelSelector: ``matchLabels``, except that an empty value means the
    label exists (``Exists``), as in ``--node-selector gpu``."""
    return {
        "matchLabels": {key: value for key, value in plain.items() if value != ""},
        "matchExpressions": [{"key": key, "operator": "Exists"} for key, value in plain.items() if value == ""],
    }
