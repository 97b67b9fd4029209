"""A config file overlays the bundled default (engine/default.yaml): a file names only what
it changes. Settings sections (ingress, metrics, admin, workers, rings, rules, journal,
snapshot) merge key by key, nested mappings too; a list or a scalar replaces the default's.
``features``, ``lists`` and ``state`` are tables of named entries: a file that names one
replaces it whole. The bundled features, lists, state and rules (files and the thresholds
their scores are made for) are written for the bundled schema, so a file that sets
``schema`` gets none of them: it names its own, as before overlaying. The
default's file paths are absolute by then (config.portable_raw), so they work wherever the
overlaying file is; the file's own relative paths resolve against its directory."""
from __future__ import annotations

import copy
from typing import Mapping

TABLES = ("features", "lists", "state")


def _merge(base, over):
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v)
        return out
    return copy.deepcopy(over)


def overlay(default: Mapping, user: Mapping) -> dict:
    """``user`` over ``default`` (both parsed YAML mappings); neither is changed."""
    out = copy.deepcopy(dict(default))
    if "schema" in user:
        for k in ("schema", "rules", *TABLES):
            out.pop(k, None)
    for k, v in user.items():
        out[k] = copy.deepcopy(v) if k in TABLES or k == "schema" else _merge(out.get(k), v)
    return out
