"""Build argparse options from the config dataclasses, with each field's docstring as its help."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import typing


def field_docs(cls) -> dict[str, str]:
    """The string literal under each field of a dataclass, as in sparsify/delphi configs; a
    field a subclass redeclares without one keeps its base class's."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for node, nxt in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = docs.get(f.name, "").replace("%", "%%")
        hint = hints[f.name]
        if hint is bool:
            parser.add_argument(flag, action="store_true", default=default, help=help_text)
        elif typing.get_origin(hint) is list:
            parser.add_argument(
                flag, nargs="+", default=default, help=f"{help_text} (default: {' '.join(default) or 'none'})"
            )
        else:
            base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
            parser.add_argument(flag, type=base, default=default, help=f"{help_text} (default: {default})")


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
