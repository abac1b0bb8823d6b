"""Every config value that names a column, found and checked in one place.

Config fields that name columns are typed with a :class:`audit.config.ColumnKind` marker (``Column``, ``FeatureRef``,
``NumericRef`` ...). :func:`column_references` walks a validated config along those annotations and yields each
reference with its key path, so a new key that names a column is checked as soon as it is typed that way; the
filter expression's columns are added to them. :func:`check_references` compares them with the data (the file's
columns, the model's features and their kinds, the sensitive features) and raises one :class:`DataError` with the key
path, the bad name and the closest valid one. ``validate`` and ``run`` call it right after reading the data, before
any training.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from audit.config import AuditConfig, ColumnKind
from audit.errors import DataError


@dataclass(frozen=True)
class Reference:
    """One config value that names a column: ``path`` (e.g. ``modules.ale.pairs[0][1]``), the name and its kind."""

    path: str
    name: str
    kind: str


def _kind(metadata) -> str | None:
    return next((m.kind for m in metadata if isinstance(m, ColumnKind)), None)


def _walk(value: Any, ann: Any, path: str) -> Iterator[Reference]:
    if value is None:
        return
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(ann)
        kind = _kind(meta)
        if kind is not None:
            yield Reference(path, str(value), kind)
            return
        yield from _walk(value, base, path)
    elif isinstance(ann, type) and issubclass(ann, BaseModel):
        for name, field in type(value).model_fields.items():
            sub = f"{path}.{name}" if path else name
            kind = _kind(field.metadata)
            v = getattr(value, name)
            if kind is not None and v is not None:
                yield Reference(sub, str(v), kind)
            else:
                yield from _walk(v, field.annotation, sub)
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(ann):
            if arg is type(None):
                continue
            if _fits(value, arg):
                yield from _walk(value, arg, path)
                return
    elif origin in (list, tuple):
        args = typing.get_args(ann)
        for i, item in enumerate(value):
            item_ann = args[0] if origin is list or (len(args) == 2 and args[1] is Ellipsis) else args[i]
            yield from _walk(item, item_ann, f"{path}[{i}]")
    elif origin is dict:
        k_ann, v_ann = typing.get_args(ann)
        for k, v in value.items():
            yield from _walk(k, k_ann, f"{path}.{k}")
            yield from _walk(v, v_ann, f"{path}.{k}")


def _fits(value: Any, ann: Any) -> bool:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _fits(value, typing.get_args(ann)[0])
    target = origin or ann
    return isinstance(target, type) and isinstance(value, target)


def column_slots() -> list[tuple[str, str]]:
    """Every place in the config schema that names a column, as ``(slot, kind)``: ``[]`` marks a list item, ``{}`` a
    mapping key (``local.counterfactuals.ranges{}``), ``.*`` any entry of a mapping of sections. Tests use it to check
    that every such key has a case in the table of wrong references.
    """
    out: list[tuple[str, str]] = []

    def walk(ann: Any, path: str) -> None:
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            base, *meta = typing.get_args(ann)
            kind = _kind(meta)
            if kind is not None:
                out.append((path, kind))
            else:
                walk(base, path)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            for name, field in ann.model_fields.items():
                sub = f"{path}.{name}" if path else name
                kind = _kind(field.metadata)
                if kind is not None:
                    out.append((sub, kind))
                else:
                    walk(field.annotation, sub)
        elif origin in (typing.Union, types.UnionType):
            for arg in typing.get_args(ann):
                if arg is not type(None):
                    walk(arg, path)
        elif origin in (list, tuple):
            args = [a for a in typing.get_args(ann) if a is not Ellipsis]
            for a in dict.fromkeys(args):
                walk(a, f"{path}[]")
        elif origin is dict:
            k_ann, v_ann = typing.get_args(ann)
            walk(k_ann, f"{path}{{}}")
            walk(v_ann, f"{path}.*")

    walk(AuditConfig, "")
    out.append(("dataset.filter", "column"))  # the columns the filter expression reads
    return list(dict.fromkeys(out))


def column_references(cfg: AuditConfig) -> list[Reference]:
    """Every config value that names a column (including the columns ``dataset.filter`` reads), in config order."""
    refs = list(_walk(cfg, AuditConfig, ""))
    if cfg.dataset.filter:
        from audit.expr import parse_filter

        refs += [Reference("dataset.filter", c, "column") for c in parse_filter(cfg.dataset.filter).columns]
    return refs


def closest(name: str, options) -> str:
    m = difflib.get_close_matches(name, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


def check_columns(cfg: AuditConfig, columns: list[str], selected: list[str] | None = None) -> None:
    """Check the references of kind ``column`` against the columns of the data file (before any other work).

    ``selected``: the columns actually read (``dataset.columns`` and what the config needs), when fewer than the
    file's ``columns``.

    Raises
    ------
    DataError
        ``<key path>: column '<name>' not found (did you mean '<closest>'?); columns are [...]``.
    """
    have = set(columns)
    read = set(selected) if selected is not None else have
    for ref in column_references(cfg):
        if ref.kind != "column":
            continue
        if ref.name not in have:
            shown = columns if len(columns) <= 30 else columns[:30] + ["..."]
            raise DataError(
                f"{ref.path}: column '{ref.name}' not found{closest(ref.name, columns)}; columns are {shown}"
            )
        if ref.name not in read:
            raise DataError(f"{ref.path}: column '{ref.name}' is not among dataset.columns; add it there")


def check_references(cfg: AuditConfig, schema, sensitive: list[str]) -> None:
    """Check the feature-level references (model features, their kinds, sensitive features) against the schema.

    Raises
    ------
    DataError
        Naming the key path, the name, what it must name and the closest valid name.
    """
    features = {f.name: f for f in schema.features}
    names = list(features)
    for ref in column_references(cfg):
        kind, name = ref.kind, ref.name
        if kind in ("feature", "numeric", "categorical"):
            if name not in features:
                raise DataError(
                    f"{ref.path}: '{name}' is not a model feature{closest(name, names)}; features are {names}"
                )
            f = features[name]
            if kind != "feature" and f.kind != kind:
                raise DataError(f"{ref.path}: '{name}' is {f.kind}; this key takes a {kind} feature")
        elif kind == "sensitive" and name not in sensitive:
            raise DataError(
                f"{ref.path}: '{name}' is not a sensitive feature{closest(name, sensitive)}; sensitive features are "
                f"{sensitive} (list it in fairness.sensitive_features or fairness.derived)"
            )
        elif kind == "feature_or_sensitive" and name not in features and name not in sensitive:
            options = names + [s for s in sensitive if s not in features]
            raise DataError(f"{ref.path}: '{name}' is neither a feature nor a sensitive column{closest(name, options)}")
