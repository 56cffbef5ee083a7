"""Reading explanations as Neuronpedia and delphi write them, refusing a bad file whole.

Neuronpedia: explanation records with `index` (a string in its exports), `description`, `layer`
(the source id, e.g. "6-res-jb"), and `explanationModelName` / `typeName`; as a JSON array, as
JSON lines, gzipped or not, or the bulk export's folder of `explanations/batch-N.jsonl.gz`.
Its exports carry no score (`scoreV1` / `scoreV2` are read where present).

delphi: a results folder with `explanations/<module>_latent<N>.txt` (each a JSON string) and
`scores/<scorer>/<module>_latent<N>.txt` (a JSON list of per-example records with `activating`
and `prediction`); the score is delphi's balanced accuracy, (TP/P + TN/N) / 2, of one scorer.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pandas as pd

from backend.errors import UserError

_LATENT = re.compile(r"^(?P<module>.+)_latent(?P<index>\d+)\.txt$")


def detect(path: str) -> str:
    p = Path(path)
    if p.is_dir() and (p / "explanations").is_dir() and any((p / "explanations").glob("*_latent*.txt")):
        return "delphi"
    if p.is_dir() and (p / "explanations").is_dir():
        return "neuronpedia"
    if p.is_file() and p.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
        return "neuronpedia"
    raise UserError(
        f"{path}: not an explanations file or folder this tool reads (Neuronpedia .json/.jsonl[.gz] or its export "
        "folder with explanations/, or a delphi results folder with explanations/<module>_latent<N>.txt)"
    )


def _open_text(p: Path) -> str:
    try:
        raw = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"{p}: cannot be read as UTF-8 text ({e})") from None


def _records(p: Path) -> list[tuple[str, dict]]:
    """(where, record) of every explanation in a Neuronpedia file."""
    text = _open_text(p).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return [(f"{p}[{i}]", r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{p}:{n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{p}:{n} is not valid JSON ({e.msg})") from None
    return out


def read_neuronpedia(path: str, layer: str | None = None) -> pd.DataFrame:
    p = Path(path)
    files = sorted((p / "explanations").glob("*.json*")) if p.is_dir() else [p]
    rows = []
    for f in files:
        for where, r in _records(f):
            if not isinstance(r, dict):
                raise UserError(f"{where}: an explanation must be a JSON object")
            for field in ("index", "description"):
                if field not in r:
                    raise UserError(
                        f"{where}: no {field!r} field (Neuronpedia explanations have index and description)"
                    )
            try:
                feature = int(r["index"])
            except (TypeError, ValueError):
                raise UserError(f"{where}: index {r['index']!r} is not a feature number") from None
            text = r["description"]
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{where}: empty description")
            score = r.get("scoreV2", r.get("scoreV1"))
            model = r.get("explanationModelName") or r.get("typeName") or "unknown"
            rows.append(
                {
                    "layer": str(r.get("layer", "")),
                    "feature": feature,
                    "source": f"neuronpedia:{model}",
                    "text": text.strip(),
                    "score": float(score) if isinstance(score, int | float) and score else None,
                }
            )
    df = pd.DataFrame(rows, columns=["layer", "feature", "source", "text", "score"])
    layers = sorted(set(df["layer"]) - {""})
    if layer is not None:
        df = df[df["layer"] == layer]
        if df.empty:
            raise UserError(f"{path}: no explanation of layer {layer!r} (it has {', '.join(layers) or 'none'})")
    elif len(layers) > 1:
        raise UserError(f"{path} holds explanations of several layers ({', '.join(layers[:6])}): pick one with --layer")
    return df.drop(columns="layer")


def _balanced_accuracy(records: list) -> float | None:
    tp = tn = pos = neg = 0
    for r in records:
        if not isinstance(r, dict) or r.get("prediction") is None or "activating" not in r:
            continue
        act, pred = bool(r["activating"]), bool(r["prediction"])
        pos += act
        neg += not act
        tp += act and pred
        tn += (not act) and (not pred)
    if not pos or not neg:
        return None
    return (tp / pos + tn / neg) / 2


def read_delphi(path: str, module: str | None = None, scorer: str = "detection") -> pd.DataFrame:
    p = Path(path)
    found = []
    for f in sorted((p / "explanations").glob("*.txt")):
        m = _LATENT.match(f.name)
        if not m:
            raise UserError(f"{f}: not named <module>_latent<N>.txt as delphi names explanations")
        found.append((m["module"], int(m["index"]), f))
    modules = sorted({m for m, _, _ in found})
    if module is not None:
        found = [x for x in found if x[0] == module]
        if not found:
            raise UserError(f"{path}: no explanation of module {module!r} (it has {', '.join(modules) or 'none'})")
    elif len(modules) > 1:
        raise UserError(
            f"{path} holds explanations of several modules ({', '.join(modules[:6])}): pick one with --module"
        )
    rows = []
    for _, index, f in found:
        try:
            text = json.loads(_open_text(f))
        except json.JSONDecodeError:
            raise UserError(f"{f}: not a JSON string, as delphi writes explanations") from None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{f}: empty explanation")
        score = None
        sf = p / "scores" / scorer / f.name
        if sf.exists():
            try:
                records = json.loads(_open_text(sf))
            except json.JSONDecodeError:
                raise UserError(f"{sf}: not valid JSON") from None
            if not isinstance(records, list):
                raise UserError(f"{sf}: a delphi score file is a JSON list of per-example records")
            score = _balanced_accuracy(records)
        rows.append({"feature": index, "source": "delphi", "text": text.strip(), "score": score})
    return pd.DataFrame(rows, columns=["feature", "source", "text", "score"])


def import_explanations(
    path: str,
    db_path: str,
    sae: str,
    store: str,
    fmt: str = "auto",
    layer: str | None = None,
    module: str | None = None,
    scorer: str = "detection",
) -> int:
    """Read a file or folder, check every feature against the SAE in the database, then add all
    of it to the store in one transaction (or nothing). Returns how many rows were new."""
    from backend.explanations.store import add
    from backend.store import queries

    if not Path(path).exists():
        raise UserError(f"{path} does not exist")
    fmt = detect(path) if fmt == "auto" else fmt
    if fmt == "neuronpedia":
        df = read_neuronpedia(path, layer)
    elif fmt == "delphi":
        df = read_delphi(path, module, scorer)
    else:
        raise UserError(f"unknown format {fmt!r}: use auto, neuronpedia or delphi")
    if df.empty:
        raise UserError(f"{path}: no explanation in it")
    d_sae = queries.sae_row(db_path, sae).d_sae
    bad = df[(df["feature"] < 0) | (df["feature"] >= d_sae)]
    if len(bad):
        raise UserError(f"{path}: feature {int(bad['feature'].iloc[0])} does not exist in {sae} (0 .. {d_sae - 1})")
    return add(store, df.assign(db=Path(db_path).name, sae=sae))
