"""A shard's partial state on disk or on the wire: tensors and plain values only, so a state
from another machine can be merged without running any code it carries.

The format is torch's zip file read with `weights_only=True`, which unpickles only tensors,
numbers, strings, None and containers of them (dicts, lists, tuples); the run's configuration
travels as JSON text inside it. Anything else (a pickled object, a file of another kind, an
older state) is refused with a message before a single value of it is used.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import BinaryIO

import torch

from backend.errors import UserError

FORMAT = 2
KEYS = {"format", "config", "n_seqs", "stats", "propagation"}


def save(state: dict, where: str | Path | BinaryIO) -> None:
    """`state` as Harvest.state_dict gives it; the config dict is stored as JSON text."""
    torch.save({**state, "format": FORMAT, "config": json.dumps(state["config"])}, where)


def to_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    save(state, buf)
    return buf.getvalue()


def load(where: str | Path | bytes, name: str | None = None) -> dict:
    """The state saved by `save`, or a UserError naming `name` (the file, by default)."""
    name = name or str(where)
    src = io.BytesIO(where) if isinstance(where, bytes) else where
    try:
        state = torch.load(src, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"{name} is not a shard state this tool wrote, or holds more than tensors and plain values "
            f"(refused without running anything in it): {first}"
        ) from None
    except OSError as e:
        raise UserError(f"cannot read {name}: {e.strerror or e}") from None
    if not isinstance(state, dict) or set(state) != KEYS or state.get("format") != FORMAT:
        raise UserError(f"{name} is not a shard state of this version (rerun the shard with this code)")
    try:
        config = json.loads(state["config"])
    except (TypeError, json.JSONDecodeError):
        raise UserError(f"{name}: its configuration is not JSON") from None
    if not isinstance(config, dict) or not isinstance(state["n_seqs"], int):
        raise UserError(f"{name} is not a shard state of this version (rerun the shard with this code)")
    return {**state, "config": config}
