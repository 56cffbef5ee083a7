"""One SAE of a database as a folder Neuronpedia's importer takes without a rejected row.

Neuronpedia's import (its admin route `/api/admin/import?modelId=M&sourceId=S`) reads, from its
dataset bucket under `v1/M/S/`: `model.jsonl`, `sourceset.jsonl`, `source.jsonl` (each one
line, created only if new), then `features/`, `activations/` and `explanations/`, each a set of
`batch-N.jsonl.gz` files that it reads whole into one string and inserts with the column names of
the file's first line, skipping rows whose key exists (ON CONFLICT DO NOTHING). So:
- every line of a file carries the same keys, no value is NaN, and no file is empty (an empty
  features or activations file stops the import);
- files hold FEATURES_PER_BATCH features each, as Neuronpedia's own exports do, and a file is cut
  earlier if its text would pass MAX_FILE_CHARS (Node's strings end near 512 M characters);
- activation and explanation ids are derived from (model id, source id, feature, and the
  example's rank or the explanation's origin and text): unique across models that share a
  source id, and the same on every re-export, so importing again adds only what is new;
- `creatorId` / `authorId` is `--author`, a user that must exist there (a stock instance has the
  `bot` user, clkht01d40000jv08hvalcvly); explanation type and model names are foreign keys to
  rows a stock instance has only after its config sync, so they are left empty unless given;
- token effects are Neuronpedia's "positive / negative logits" (`pos_str`, `neg_str`) only when
  they are W_dec · W_U; an encoder's W_dec · W_E effects are left out, and the source set's
  description says so;
- an explanation's delphi scores go into `scoreV1` (detection, else the best) and `scoreV2`
  (fuzz), the fields Neuronpedia orders explanations by.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from backend.errors import UserError
from backend.explanations import store as explanations_store
from backend.store import queries

FEATURES_PER_BATCH = 1024
"""features per file, as Neuronpedia's own exports: batch N holds features N*1024 .. N*1024+1023"""
MAX_FILE_CHARS = 256 * 2**20
"""most JSON text in one file: half of what Node's importer can hold in one string"""
BOT_USER = "clkht01d40000jv08hvalcvly"
"""the user a stock Neuronpedia seeds (`bot`), the default creator of imported data there"""


def _id(*parts) -> str:
    """A 25-character id (the length of Neuronpedia's cuids) that depends only on `parts`."""
    return "sd" + hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:23]


def _finite(v: float) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise UserError(f"a value to export is {v}: Neuronpedia's importer takes finite numbers only")
    return v


def _write_batches(folder: Path, rows_by_feature: dict[int, list[dict]]) -> list[str]:
    """Write rows in batch files of FEATURES_PER_BATCH features (fewer where the text would pass
    MAX_FILE_CHARS); every line has the first line's keys. Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    lines: list[str] = []
    size = 0
    keys = None

    def flush(n: int) -> None:
        nonlocal lines, size
        if lines:
            path = folder / f"batch-{n}.jsonl.gz"
            tmp = path.with_name(path.name + ".part")
            with gzip.open(tmp, "wt", encoding="utf-8") as fh:
                fh.writelines(lines)
            tmp.replace(path)
            written.append(path.name)
        lines, size = [], 0

    n_file = 0
    batch = None
    for f in sorted(rows_by_feature):
        if batch is not None and f // FEATURES_PER_BATCH != batch:
            flush(n_file)
            n_file += 1
        batch = f // FEATURES_PER_BATCH
        text = ""
        for r in rows_by_feature[f]:
            keys = keys or list(r)
            if list(r) != keys:
                raise AssertionError(f"an export line has keys {list(r)}, the file's first line {keys}")
            text += json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n"
        if len(text) > MAX_FILE_CHARS:
            raise UserError(f"feature {f}'s rows alone are {len(text):,} characters: export fewer activations")
        if size + len(text) > MAX_FILE_CHARS:
            flush(n_file)
            n_file += 1
        lines.append(text)
        size += len(text)
    flush(n_file)
    return written


def _one(path: Path, row: dict) -> None:
    path.write_text(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")


def export(
    db_path: str,
    sae: str,
    out: str,
    model_id: str,
    source_id: str,
    author: str,
    store: str,
    human: dict[int, str] | None = None,
    n_activations: int = 20,
    explanation_type: str | None = None,
    explanation_model: str | None = None,
    layers: int | None = None,
) -> dict[str, int]:
    """Write the folder; `human`: the team's label descriptions by feature, exported as
    explanations too (typeName and explanationModelName empty, as Neuronpedia's own human
    explanations). Returns rows written per kind."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", model_id) or not re.fullmatch(r"[A-Za-z0-9._-]+", source_id):
        raise UserError("--model-id and --source-id are names like gpt2-small and 6-res-jb (letters, digits, . _ -)")
    if not author:
        raise UserError(
            f"export needs --author: a user id that exists in your Neuronpedia (a stock one has {BOT_USER})"
        )
    row = queries.sae_row(db_path, sae)
    run = queries.runs(db_path).set_index("run_id").loc[row.run_id]
    strings = queries.vocab(db_path, row.run_id)
    feats = queries.sae_table(db_path, "features", sae, "feature")
    logits = row.effect_kind == "unembed"
    effects = queries.sae_table(db_path, "token_effects", sae, "feature, direction DESC, rank") if logits else None
    neigh = queries.sae_table(db_path, "neighbours", sae, "feature, rank")
    set_name = source_id.split("-", 1)[1] if "-" in source_id else source_id
    base = {"modelId": model_id, "layer": source_id}

    hooks = queries.saes(db_path)["hook"]
    depth = [int(m.group(1)) for h in hooks if (m := re.search(r"blocks\.(\d+)\.", h))]
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    _one(
        root / "model.jsonl",
        {
            "id": model_id,
            "displayName": model_id,
            "displayNameShort": model_id,
            "creatorId": author,
            "dimension": int(row.d_in),
            "layers": int(layers if layers is not None else (max(depth) + 1 if depth else 1)),
            "neuronsPerLayer": int(row.d_in),
            "owner": str(run["model"]),
            "visibility": "PUBLIC",
        },
    )
    what = (
        "top and bottom logits: W_dec · W_U"
        if logits
        else "no logits: this model has no unembedding, so its token effects (W_dec · W_E) are left out"
    )
    _one(
        root / "sourceset.jsonl",
        {
            "modelId": model_id,
            "name": set_name,
            "description": f"{row.architecture} SAEs exported from an SAE dashboard database ({what})",
            "creatorName": author,
            "creatorId": author,
            "urls": [],
            "visibility": "PUBLIC",
        },
    )
    _one(
        root / "source.jsonl",
        {
            "id": source_id,
            "modelId": model_id,
            "setName": set_name,
            "creatorId": author,
            "visibility": "PUBLIC",
            "notes": f"{sae} at {row.hook}, {int(row.d_sae)} features, over {int(row.n_tokens):,} tokens",
        },
    )

    eff = {k: g for k, g in effects.groupby("feature")} if effects is not None else {}
    nb = {k: g for k, g in neigh.groupby("feature")}
    features: dict[int, list[dict]] = {}
    for f in feats.itertuples():
        n = nb.get(f.feature)
        r = {
            **base,
            "index": str(int(f.feature)),
            "creatorId": author,
            "hookName": row.hook,
            "maxActApprox": _finite(f.max_act),
            "frac_nonzero": _finite(f.density),
            "topkCosSimIndices": [int(i) for i in n["other"]] if n is not None else [],
            "topkCosSimValues": [_finite(v) for v in n["cosine"]] if n is not None else [],
        }
        if logits:
            e = eff.get(f.feature)
            pos = e[e["direction"] == 1] if e is not None else e
            neg = e[e["direction"] == -1] if e is not None else e
            r |= {
                "pos_str": [strings[i] for i in pos["token_id"]] if pos is not None else [],
                "pos_values": [_finite(v) for v in pos["value"]] if pos is not None else [],
                "neg_str": [strings[i] for i in neg["token_id"]] if neg is not None else [],
                "neg_values": [_finite(v) for v in neg["value"]] if neg is not None else [],
            }
        features[int(f.feature)] = [r]
    if not features:
        raise UserError(f"{sae} has no features to export")

    acts: dict[int, list[dict]] = {}
    for r in queries.top_examples_all(db_path, sae, n_activations).itertuples():
        values = [_finite(v) for v in r.acts]
        top = int(np.argmax(values))
        f = int(r.feature)
        acts.setdefault(f, []).append(
            {
                **base,
                "id": _id(model_id, source_id, f, "activation", int(r.rank)),
                "index": str(f),
                "tokens": [strings[i] for i in np.asarray(r.token_ids, dtype=np.int64)],
                "values": values,
                "maxValue": values[top],
                "maxValueTokenIndex": top,
                "minValue": min(values),
                "creatorId": author,
            }
        )

    expl: dict[int, list[dict]] = {}
    imported = explanations_store.for_sae(store, Path(db_path).name, sae)
    for (f, source, text), g in imported.groupby(["feature", "source", "text"], sort=True):
        by = {s: v for s, v in zip(g["scorer"], g["score"]) if isinstance(s, str) and pd.notna(v)}
        v1 = by.get("detection", max(by.values()) if by else 0.0)
        expl.setdefault(int(f), []).append(
            _explanation(base, model_id, source_id, int(f), source, text, author, explanation_type, explanation_model)
            | {"scoreV1": _finite(v1), "scoreV2": None if "fuzz" not in by else _finite(by["fuzz"])}
        )
    for f, text in sorted((human or {}).items()):
        if text and text.strip():
            expl.setdefault(int(f), []).append(
                _explanation(base, model_id, source_id, int(f), "human", text, author, None, None)
                | {"scoreV1": 0.0, "scoreV2": None}
            )
    counts = {}
    for name, rows in (("features", features), ("activations", acts), ("explanations", expl)):
        _write_batches(root / name, rows)
        counts[name] = sum(len(v) for v in rows.values())
    return counts


def _explanation(base, model_id, source_id, f, origin, text, author, type_name, model_name) -> dict:
    return {
        **base,
        "id": _id(model_id, source_id, f, "explanation", origin, text),
        "index": str(f),
        "description": text,
        "authorId": author,
        "typeName": type_name,
        "explanationModelName": model_name,
    }
