"""Labels in and out as CSV, JSON or Parquet. An import is checked whole before anything is
written and then written in one transaction: a bad file changes nothing."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from backend.errors import UserError
from backend.labels.store import COLUMNS, Label, add_rows, all_labels, exists, latest

FORMATS = ("csv", "json", "parquet")


def file_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix[1:] not in FORMATS:
        raise UserError(f"{path}: use a file ending in .csv, .json or .parquet")
    return suffix[1:]


def to_bytes(df: pd.DataFrame, fmt: str) -> bytes:
    df = df[COLUMNS].copy()
    df["created_at"] = pd.to_datetime(df["created_at"]).dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    if fmt == "csv":
        return df.map(_csv_cell).to_csv(index=False).encode()
    if fmt == "json":
        return json.dumps(df.replace({np.nan: None}).to_dict("records"), indent=1, default=str).encode()
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def export_labels(file: str, labels_loc: str, history: bool = True) -> int:
    """Write the labels to `file` (all verdicts, or only each labeler's current one); the file
    appears whole or not at all."""
    fmt = file_format(file)
    target = Path(file)
    if target.is_dir():
        raise UserError(f"{file} is a folder; give a file name ending in .{fmt}")
    if not target.parent.is_dir():
        raise UserError(f"cannot write {file}: the folder {target.parent} does not exist")
    if not exists(labels_loc):
        raise UserError(f"there is no labels store at {labels_loc}: nothing to export (check --labels)")
    df = all_labels(labels_loc) if history else latest(labels_loc)
    data = to_bytes(df, fmt)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except OSError as e:
        raise UserError(f"cannot write {file}: {e.strerror or e}") from None
    return len(df)


def read_table(data: bytes, fmt: str) -> pd.DataFrame:
    try:
        if fmt == "csv":
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""]).map(_from_csv_cell)
        elif fmt == "json":
            records = json.loads(data.decode("utf-8"))
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise UserError("a JSON labels file is a list of objects, one per label")
            df = pd.DataFrame(records)
        else:
            df = pd.read_parquet(io.BytesIO(data))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"could not read the labels file as {fmt.upper()}: {first}") from None
    missing = set(COLUMNS) - set(df.columns) - {"uid", "created_at", "description", "confidence"}
    if missing:
        raise UserError(f"labels file lacks column(s) {sorted(missing)}")
    return df


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _whole(v, what: str, line: int) -> int | None:
    if _blank(v):
        return None
    if isinstance(v, bool):  # JSON true is not feature 1
        raise UserError(f"row {line}: {what} {v!r} is not a number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UserError(f"row {line}: {what} {v!r} is not a number") from None
    if not math.isfinite(f) or f != int(f):
        raise UserError(f"row {line}: {what} {v!r} is not a whole number")
    return int(f)


def _time(v, line: int) -> str | None:
    if _blank(v):
        return None
    try:
        t = pd.Timestamp(v)
    except (ValueError, TypeError, OverflowError):
        raise UserError(f"row {line}: created_at {v!r} is not a date and time") from None
    if pd.isna(t):
        raise UserError(f"row {line}: created_at {v!r} is not a date and time")
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return t.isoformat(timespec="microseconds")


def validated_rows(df: pd.DataFrame) -> list[list]:
    """Every row checked and turned into store order (COLUMNS); the first bad row stops it all."""
    rows, seen, occurrences = [], set(), Counter()
    for line, rec in enumerate(df.astype(object).where(df.notna(), None).to_dict("records"), start=2):
        try:
            feature = _whole(rec.get("feature"), "feature", line)
            lab = Label(
                db=str(rec.get("db") or ""),
                run_id=str(rec.get("run_id") or ""),
                sae=str(rec.get("sae") or ""),
                feature=-1 if feature is None else feature,
                verdict=str(rec.get("verdict")),
                labeler=str(rec.get("labeler") or ""),
                description=None if _blank(rec.get("description")) else str(rec.get("description")),
                confidence=_whole(rec.get("confidence"), "confidence", line),
            )
        except UserError as e:
            raise UserError(f"row {line}: {e}" if not str(e).startswith("row ") else str(e)) from None
        if not (lab.db and lab.run_id and lab.sae):
            raise UserError(f"row {line}: db, run_id and sae must not be empty")
        created = _time(rec.get("created_at"), line)
        uid = None if _blank(rec.get("uid")) else str(rec.get("uid")).strip()
        if uid is not None:
            if uid in seen:
                raise UserError(f"row {line}: uid {uid!r} appears twice in the file")
            seen.add(uid)
        else:
            uid = _content_uid(lab, created, occurrences)
        rows.append(lab.row(uid=uid, created_at=created))
    return rows


def _content_uid(lab: Label, created: str | None, occurrences: Counter) -> str:
    """A uid for a row that has none, from what it says (and which repeat of the same content
    in the file it is), so importing the same file twice adds its rows once."""
    content = json.dumps(
        [lab.db, lab.run_id, lab.sae, lab.feature, lab.verdict, lab.labeler, lab.description, lab.confidence, created]
    )
    occurrences[content] += 1
    return "c" + hashlib.sha256(f"{content}#{occurrences[content]}".encode()).hexdigest()[:31]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(v):
    """A text cell a spreadsheet would run as a formula gets a leading apostrophe (as OWASP
    advises); so does one that already starts with an apostrophe before such a character, so
    that `_from_csv_cell` restores every value exactly."""
    if isinstance(v, str) and (
        v.startswith(_FORMULA_START) or (v[:1] == "'" and v[1:].startswith(_FORMULA_START + ("'",)))
    ):
        return "'" + v
    return v


def _from_csv_cell(v):
    if isinstance(v, str) and v[:1] == "'" and v[1:].startswith(_FORMULA_START + ("'",)):
        return v[1:]
    return v


def import_table(df: pd.DataFrame, labels_loc: str) -> int:
    """Append rows not already present (by uid), in the file's order; all or nothing."""
    return add_rows(labels_loc, validated_rows(df))


def import_labels(file: str, labels_loc: str) -> int:
    path = Path(file)
    if not path.exists():
        raise UserError(f"{file} does not exist")
    if path.is_dir():
        raise UserError(f"{file} is a folder, not a labels file")
    fmt = file_format(file)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {file}: {e.strerror or e}") from None
    return import_table(read_table(data, fmt), labels_loc)
