"""Row filters (``dataset.filter``): a small, safe expression language evaluated column-wise on a DataFrame.

The grammar is a subset of :meth:`pandas.DataFrame.query`, parsed with :mod:`ast` and evaluated by this module alone
(nothing is ever passed to ``eval``)::

    age >= 18 and `loan-purpose` != "other"
    status in ["A", "B"] or not isna(income)
    (LIMIT_BAL / 1000 > 20) & (SEX == 2)

- column names: plain identifiers, or any name in backticks (`` `hours-per-week` ``);
- constants: numbers, strings, ``True``, ``False``, ``None``; lists or tuples of them on the right of ``in``;
- comparisons ``== != < <= > >= in not in`` (chained comparisons too), arithmetic ``+ - * / %``;
- ``and or not`` and their element-wise forms ``& | ~``; ``isna(col)`` / ``notna(col)``.

A missing value satisfies no comparison (as in pandas). The filter is applied to the raw values of the file, before
``dataset.value_labels``.
"""

from __future__ import annotations

import ast
import difflib
import functools
import operator
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_NODES = 400
_BACKTICK = re.compile(r"`([^`]*)`")
_CMP = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.Mod: operator.mod}  # fmt: skip
_FUNCS = {"isna": True, "isnull": True, "notna": False, "notnull": False}


@dataclass(frozen=True)
class Filter:
    """A parsed row filter. ``columns``: the column names it reads."""

    text: str
    tree: ast.Expression
    names: dict[str, str]  # placeholder -> column name (backticked names)
    columns: tuple[str, ...]

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows that pass, shape (len(frame),).

        Raises
        ------
        ValueError
            A column the frame lacks, or a comparison of a number column with text (or the reverse).
        """
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            close = difflib.get_close_matches(missing[0], [str(c) for c in frame.columns], n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"column '{missing[0]}' not found{hint}")
        out = _Eval(frame, self.names).visit(self.tree.body)
        if not isinstance(out, pd.Series):
            raise ValueError("the expression does not depend on any column; write a condition on a column")
        if not (pd.api.types.is_bool_dtype(out) or out.isna().all()):
            raise ValueError("the expression is not a condition (it gives values, not true/false); compare it")
        return out.fillna(False).to_numpy(dtype=bool)


@functools.lru_cache(maxsize=64)
def parse_filter(text: str) -> Filter:
    """Parse and check a filter expression; ValueError names what is not allowed.

    Parsed once per process: the config's check, the columns it reads (the references and what a file reads) and
    the filtering of every file share the same :class:`Filter`, which nothing changes.

    Examples
    --------
    >>> f = parse_filter("`hours-per-week` >= 40 and sex in ['F', 'M']")
    >>> f.columns
    ('hours-per-week', 'sex')
    >>> int(f.mask(pd.DataFrame({"hours-per-week": [10, 50, 60], "sex": ["F", "M", "X"]})).sum())
    1
    >>> parse_filter("__import__('os')")
    Traceback (most recent call last):
    ...
    ValueError: function '__import__' is not allowed; use isna(column) or notna(column)
    """
    names: dict[str, str] = {}

    def placeholder(m: re.Match) -> str:
        key = f"__col{len(names)}__"
        names[key] = m.group(1)
        return key

    src = _BACKTICK.sub(placeholder, text)
    if "`" in src:
        raise ValueError("an unclosed backtick; write a column name with other characters as `name`")
    try:
        tree = ast.parse(src.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError) as exc:
        msg = getattr(exc, "msg", None) or exc.__class__.__name__
        raise ValueError(f"not a valid expression ({msg})") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ValueError(f"too long ({len(nodes)} parts, at most {MAX_NODES})")
    columns: list[str] = []
    for node in nodes:
        _check_node(node)
        if isinstance(node, ast.Name) and node.id not in _FUNCS:
            col = names.get(node.id, node.id)
            if col not in columns:
                columns.append(col)
    return Filter(text, tree, names, tuple(columns))


def _check_node(node: ast.AST) -> None:
    allowed = (
        ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Invert, ast.USub, ast.UAdd,
        ast.Compare, ast.In, ast.NotIn, ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple, ast.BinOp,
        ast.BitAnd, ast.BitOr, ast.Call, *_CMP, *_ARITH,
    )  # fmt: skip
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        if name not in _FUNCS:
            raise ValueError(f"function '{name}' is not allowed; use isna(column) or notna(column)")
        if len(node.args) != 1 or node.keywords or not isinstance(node.args[0], ast.Name):
            raise ValueError(f"{name}() takes one column name")
        return
    if not isinstance(node, allowed):
        what = ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__
        raise ValueError(f"'{what}' is not allowed in a filter (only comparisons, and/or/not, arithmetic)")
    if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | str | bool | type(None)):
        raise ValueError(f"constant {node.value!r} is not allowed")


class _Eval:
    def __init__(self, frame: pd.DataFrame, names: dict[str, str]) -> None:
        self.frame, self.names = frame, names

    def visit(self, node: ast.AST):
        return getattr(self, f"_{type(node).__name__}")(node)

    def _Name(self, node: ast.Name):
        return self.frame[self.names.get(node.id, node.id)]

    def _Constant(self, node: ast.Constant):
        return node.value

    def _List(self, node):
        return [self.visit(e) for e in node.elts]

    _Tuple = _List

    def _Call(self, node: ast.Call):
        col = self.visit(node.args[0])
        return col.isna() if _FUNCS[node.func.id] else col.notna()

    def _BoolOp(self, node: ast.BoolOp):
        parts = [_as_bool(self.visit(v)) for v in node.values]
        out = parts[0]
        for p in parts[1:]:
            out = (out & p) if isinstance(node.op, ast.And) else (out | p)
        return out

    def _UnaryOp(self, node: ast.UnaryOp):
        v = self.visit(node.operand)
        if isinstance(node.op, ast.Not | ast.Invert):
            return ~_as_bool(v)
        return -v if isinstance(node.op, ast.USub) else v

    def _BinOp(self, node: ast.BinOp):
        a, b = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.BitAnd):
            return _as_bool(a) & _as_bool(b)
        if isinstance(node.op, ast.BitOr):
            return _as_bool(a) | _as_bool(b)
        try:
            return _ARITH[type(node.op)](a, b)
        except TypeError:
            raise ValueError(f"'{ast.unparse(node)}': arithmetic needs numbers") from None

    def _Compare(self, node: ast.Compare):
        left = self.visit(node.left)
        out = None
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.visit(right_node)
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(left, pd.Series) or not isinstance(right, list):
                    raise ValueError(f"'{ast.unparse(node)}': write column in [value, ...]")
                res = left.isin(right) & left.notna()
                res = ~res & left.notna() if isinstance(op, ast.NotIn) else res
            else:
                _check_types(left, right, node)
                res = _CMP[type(op)](left, right)
                if isinstance(res, pd.Series):  # a missing value satisfies no comparison
                    for side in (left, right):
                        if isinstance(side, pd.Series):
                            res = res & side.notna()
            out = res if out is None else (out & res)
            left = right
        return out


def _as_bool(v):
    if isinstance(v, pd.Series):
        if pd.api.types.is_bool_dtype(v):
            return v.fillna(False).astype(bool)
        raise ValueError("'and', 'or' and 'not' combine conditions; compare the column first (e.g. x > 0)")
    return bool(v)


def _check_types(left, right, node) -> None:
    for col, other in ((left, right), (right, left)):
        if not isinstance(col, pd.Series) or isinstance(other, pd.Series) or other is None:
            continue
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if numeric and isinstance(other, str):
            raise ValueError(
                f"'{ast.unparse(node)}': the column holds numbers; compare it with a number, not {other!r}"
            )
        if not numeric and isinstance(other, int | float) and not isinstance(other, bool):
            if not pd.api.types.is_bool_dtype(col):
                raise ValueError(
                    f"'{ast.unparse(node)}': the column holds text; compare it with text ('{other}'), not {other!r}"
                )
