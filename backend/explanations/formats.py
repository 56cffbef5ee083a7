"""Reading explanations as Neuronpedia and delphi write them, refusing a bad file whole.

Neuronpedia: explanation records with `index` (a string in its exports), `description`, `layer`
(the source id, e.g. "6-res-jb"), and `explanationModelName` / `typeName`; as a JSON array, as
JSON lines, gzipped or not, or the bulk export's folder of `explanations/batch-N.jsonl.gz`.
Its exports carry no score (`scoreV1` / `scoreV2` are read where present).

delphi: a results folder with `explanations/<module>_latent<N>.txt` (each a JSON string),
`scores/<scorer>/<module>_latent<N>.txt` (a JSON list of per-example records with `activating`
and `prediction`) and `run_config.json` (whose `explainer_model` wrote them). The folders delphi
(then sae-auto-interp) wrote before February 2025 name files `<module>_feature<N>.txt` and label
records `ground_truth`, with -1 for a failed prediction; both are read. Each scorer's score is
delphi's own balanced accuracy, (TP/P + TN/N) / 2 over the records with a prediction, where a
missing class adds 0 (as delphi's result analysis does). delphi's placeholder for an answer it
could not parse is not an explanation: it is skipped and counted.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from backend.errors import UserError

_LATENT = re.compile(r"^(?P<module>.+)_(?:latent|feature)(?P<index>\d+)\.txt$")
PLACEHOLDER = "Explanation could not be parsed."
"""what delphi's explainer writes when it cannot parse the model's answer"""
ROWS = ["feature", "source", "explainer", "text", "scorer", "score"]


def detect(path: str) -> str:
    p = Path(path)
    if (
        p.is_dir()
        and (p / "explanations").is_dir()
        and any(_LATENT.match(f.name) for f in (p / "explanations").rglob("*.txt"))
    ):
        return "delphi"
    if p.is_dir() and (p / "explanations").is_dir():
        return "neuronpedia"
    if p.is_file() and p.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
        return "neuronpedia"
    raise UserError(
        f"{path}: not an explanations file or folder this tool reads (Neuronpedia .json/.jsonl[.gz] or its export "
        "folder with explanations/, or a delphi results folder with explanations/<module>_latent<N>.txt)"
    )


MAX_LINE = 1 << 20
"""longest JSON line read (an explanation record is a few hundred bytes; 1 MiB leaves room)"""
MAX_FILE = 256 << 20
"""most text read from one file after decompression: a gzip bomb stops here, not at the memory limit"""
MAX_DOCUMENT = 64 << 20
MAX_RECORDS = 2_000_000
"""most explanations one import takes (two per feature of a 1M-feature SAE)"""
"""largest file read whole (a JSON array, a delphi score file); bigger exports come as JSON lines"""


def _open(p: Path):
    try:
        return gzip.open(p, "rb") if p.name.endswith(".gz") else p.open("rb")
    except OSError as e:
        raise UserError(f"{p}: cannot be read ({e.strerror or e})") from None


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where}: not UTF-8 text") from None


def _open_text(p: Path, limit: int = MAX_DOCUMENT) -> str:
    """A whole (small) file as text, decompressed as it is read and refused past `limit`."""
    try:
        with _open(p) as fh:
            raw = fh.read(limit + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{p}: cannot be read ({e})") from None
    if len(raw) > limit:
        raise UserError(
            f"{p}: more than {limit >> 20} MiB of text; split it, or write one JSON record per line (.jsonl)"
        )
    return _decode(raw, str(p))


def _lines(p: Path):
    """(line number, text) of the non-blank lines of a JSON-lines file, streamed in blocks:
    memory stays flat whatever the file says its size is; a line longer than MAX_LINE or more
    than MAX_FILE of text is refused."""
    total, n, pending = 0, 0, b""
    try:
        with _open(p) as fh:
            while block := fh.read(1 << 22):
                total += len(block)
                if total > MAX_FILE:
                    raise UserError(f"{p}: more than {MAX_FILE >> 20} MiB of text; split it into several files")
                data = pending + block
                if not data.strip():  # whitespace only (what a bomb of spaces is): count, keep nothing
                    n += data.count(b"\n")
                    pending = b""
                    continue
                *whole, pending = data.split(b"\n")
                for line in whole:
                    n += 1
                    if len(line) > MAX_LINE:
                        raise UserError(f"{p}:{n} is longer than {MAX_LINE >> 20} MiB: not an explanation record")
                    if line.strip():
                        yield n, _decode(line, f"{p}:{n}")
                if len(pending) > MAX_LINE:
                    raise UserError(f"{p}:{n + 1} is longer than {MAX_LINE >> 20} MiB: not an explanation record")
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{p}: cannot be read ({e})") from None
    if pending.strip():
        yield n + 1, _decode(pending, f"{p}:{n + 1}")


def _records(p: Path):
    """(where, record) of every explanation in a Neuronpedia file (a JSON array, or JSON lines),
    one at a time, so a bad record stops the read before the rest is held in memory."""
    try:
        with _open(p) as fh:
            start = fh.read(4096).lstrip()[:1]
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{p}: cannot be read ({e})") from None
    if start == b"[":
        try:
            data = json.loads(_open_text(p))
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise UserError(f"{p}: a JSON file of explanations is an array of records")
        yield from ((f"{p}[{i}]", r) for i, r in enumerate(data))
        return
    for n, line in _lines(p):
        try:
            yield f"{p}:{n}", json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}:{n} is not valid JSON ({e.msg})") from None


def _feature(value, where: str) -> int:
    """A feature index as Neuronpedia writes it (a string of digits, or a whole number); a bool,
    a fraction or a negative number is refused, never rounded."""
    if isinstance(value, bool):
        raise UserError(f"{where}: index {value!r} is not a feature number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise UserError(f"{where}: index {value!r} is not a feature number")


def read_neuronpedia(path: str, layer: str | None = None) -> pd.DataFrame:
    p = Path(path)
    files = sorted((p / "explanations").glob("*.json*")) if p.is_dir() else [p]
    rows = []
    for f in files:
        for where, r in _records(f):
            if not isinstance(r, dict):
                raise UserError(f"{where}: an explanation must be a JSON object")
            for key in ("index", "description"):
                if key not in r:
                    raise UserError(f"{where}: no {key!r} field (Neuronpedia explanations have index and description)")
            feature = _feature(r["index"], where)
            text = r["description"]
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{where}: empty description")
            score = r.get("scoreV2") if r.get("scoreV2") is not None else r.get("scoreV1")
            model = r.get("explanationModelName") or r.get("typeName") or "unknown"
            if len(rows) >= MAX_RECORDS:
                raise UserError(f"{path}: more than {MAX_RECORDS:,} explanations in one import; import it in parts")
            has_score = isinstance(score, int | float) and not isinstance(score, bool) and score
            rows.append(
                (
                    str(r.get("layer", "")),
                    feature,
                    f"neuronpedia:{model}",
                    r.get("explanationModelName"),
                    text.strip(),
                    "neuronpedia" if has_score else None,
                    float(score) if has_score else None,
                )
            )
    df = pd.DataFrame(rows, columns=["layer", *ROWS])
    layers = sorted(set(df["layer"]) - {""})
    if layer is not None:
        df = df[df["layer"] == layer]
        if df.empty:
            raise UserError(f"{path}: no explanation of layer {layer!r} (it has {', '.join(layers) or 'none'})")
    elif len(layers) > 1:
        raise UserError(f"{path} holds explanations of several layers ({', '.join(layers[:6])}): pick one with --layer")
    return df.drop(columns="layer")


def _balanced_accuracy(records: list) -> float | None:
    """delphi's accuracy of one latent's score file: records whose prediction failed (None, or
    -1 in the older layout) are left out; a missing class adds 0; None when nothing is left."""
    tp = tn = pos = neg = 0
    for r in records:
        if not isinstance(r, dict):
            continue
        label = r.get("activating", r.get("ground_truth"))
        pred = r.get("prediction")
        if label is None or pred is None or isinstance(pred, str) or pred == -1:
            continue
        act, yes = bool(label), float(pred) >= 0.5
        pos += act
        neg += not act
        tp += act and yes
        tn += (not act) and (not yes)
    if not pos and not neg:
        return None
    return ((tp / pos if pos else 0.0) + (tn / neg if neg else 0.0)) / 2


def _classifier_records(records) -> bool:
    """Whether a score file holds per-example classifier records (detection, fuzz) delphi's
    accuracy applies to, rather than simulation or embedding scores."""
    return isinstance(records, list) and any(
        isinstance(r, dict) and "prediction" in r and ("activating" in r or "ground_truth" in r) for r in records
    )


@dataclass
class Read:
    """What a file or folder held: rows (ROWS), and what was left out and why."""

    rows: pd.DataFrame
    placeholders: int = 0
    skipped_scorers: list[str] = field(default_factory=list)


def read_delphi(path: str, module: str | None = None, scorer: str | None = None) -> Read:
    """Every explanation of one module, with a score per scorer folder (or only `scorer`)."""
    p = Path(path)
    found = []
    for f in sorted((p / "explanations").rglob("*.txt")):
        name = f.relative_to(p / "explanations").as_posix()
        m = _LATENT.match(name)
        if not m:
            raise UserError(f"{f}: not named <module>_latent<N>.txt (or _feature<N>.txt) as delphi names explanations")
        found.append((m["module"], int(m["index"]), f, name))
    modules = sorted({m for m, _, _, _ in found})
    if module is not None:
        found = [x for x in found if x[0] == module]
        if not found:
            raise UserError(f"{path}: no explanation of module {module!r} (it has {', '.join(modules) or 'none'})")
    elif len(modules) > 1:
        raise UserError(
            f"{path} holds explanations of several modules ({', '.join(modules[:6])}): pick one with --module"
        )
    present = sorted(d.name for d in (p / "scores").iterdir() if d.is_dir()) if (p / "scores").is_dir() else []
    if scorer is not None and scorer not in present:
        raise UserError(f"{path}: no scores of scorer {scorer!r} (it has {', '.join(present) or 'none'})")
    chosen = [scorer] if scorer is not None else present
    explainer = _explainer(p)
    out = Read(pd.DataFrame(columns=ROWS))
    rows = []
    for _, index, f, name in found:
        try:
            text = json.loads(_open_text(f))
        except json.JSONDecodeError:
            raise UserError(f"{f}: not a JSON string, as delphi writes explanations") from None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{f}: empty explanation")
        if text.strip() == PLACEHOLDER:
            out.placeholders += 1
            continue
        scored = False
        for sc in chosen:
            sf = p / "scores" / sc / name.replace("/", "--")
            if not sf.exists() or sc in out.skipped_scorers:
                continue
            try:
                records = json.loads(_open_text(sf))
            except json.JSONDecodeError:
                raise UserError(f"{sf}: not valid JSON") from None
            if not _classifier_records(records):
                if scorer is not None:
                    raise UserError(
                        f"{sf}: not per-example classifier records (delphi's detection and fuzz scores), so no "
                        "balanced accuracy can be made of it"
                    )
                out.skipped_scorers.append(sc)
                continue
            score = _balanced_accuracy(records)
            if score is not None:
                rows.append((index, "delphi", explainer, text.strip(), sc, score))
                scored = True
        if not scored:
            rows.append((index, "delphi", explainer, text.strip(), None, None))
    out.rows = pd.DataFrame(rows, columns=ROWS)
    return out


def _explainer(p: Path) -> str | None:
    """The explainer model a delphi run recorded (run_config.json; its scorers use the same)."""
    cfg = p / "run_config.json"
    if not cfg.is_file():
        return None
    try:
        model = json.loads(_open_text(cfg)).get("explainer_model")
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"{cfg}: not a JSON object as delphi writes its run configuration") from None
    return model if isinstance(model, str) and model else None


@dataclass
class Imported:
    explanations: int
    scores: int
    placeholders: int = 0
    skipped_scorers: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        extra = f"; skipped {self.placeholders} of delphi's unparsed-answer placeholders" if self.placeholders else ""
        if self.skipped_scorers:
            extra += f"; scorers without classifier records left out: {', '.join(self.skipped_scorers)}"
        return f"{self.explanations} new explanations, {self.scores} new scores{extra}"


def import_explanations(
    path: str,
    db_path: str,
    sae: str,
    store: str,
    fmt: str = "auto",
    layer: str | None = None,
    module: str | None = None,
    scorer: str | None = None,
) -> Imported:
    """Read a file or folder, check every feature against the SAE in the database, then add all
    of it to the store in one transaction (or nothing). Returns what was new and what was left out."""
    from backend.explanations.store import add
    from backend.store import queries

    if not Path(path).exists():
        raise UserError(f"{path} does not exist")
    fmt = detect(path) if fmt == "auto" else fmt
    if fmt == "neuronpedia":
        got = Read(read_neuronpedia(path, layer))
    elif fmt == "delphi":
        got = read_delphi(path, module, scorer)
    else:
        raise UserError(f"unknown format {fmt!r}: use auto, neuronpedia or delphi")
    df = got.rows
    if df.empty:
        why = f" but {got.placeholders} unparsed-answer placeholders" if got.placeholders else ""
        raise UserError(f"{path}: no explanation in it{why}")
    d_sae = queries.sae_row(db_path, sae).d_sae
    bad = df[(df["feature"] < 0) | (df["feature"] >= d_sae)]
    if len(bad):
        raise UserError(f"{path}: feature {int(bad['feature'].iloc[0])} does not exist in {sae} (0 .. {d_sae - 1})")
    new, scores = add(store, df.assign(db=Path(db_path).name, sae=sae))
    return Imported(new, scores, got.placeholders, got.skipped_scorers)
