"""A database's features, activations and explanations in the layout Neuronpedia imports: a
folder with `features/`, `activations/` and `explanations/`, each `batch-0.jsonl.gz` of JSON
lines whose keys are the columns of its tables (Neuron, Activation, Explanation). Neuronpedia
reads the column names from a file's first line, so every line of a file carries the same keys.

`--model-id` must name a model that exists on the Neuronpedia instance, `--source-id` becomes
the `layer` (e.g. "6-res-jb"), and `--author` must be an existing user id there.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from backend.errors import UserError
from backend.explanations import store as explanations_store
from backend.store import queries


def _write(path: Path, rows: list[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(rows)


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
) -> dict[str, int]:
    """Write the three files; `human`: the team's label descriptions by feature, exported as
    explanations too. Returns rows written per file."""
    row = queries.sae_row(db_path, sae)
    strings = queries.vocab(db_path, row.run_id)
    feats = queries.sae_table(db_path, "features", sae, "feature")
    effects = queries.sae_table(db_path, "token_effects", sae, "feature, direction DESC, rank")
    neigh = queries.sae_table(db_path, "neighbours", sae, "feature, rank")
    base = {"modelId": model_id, "layer": source_id}
    eff = {k: g for k, g in effects.groupby("feature")}
    nb = {k: g for k, g in neigh.groupby("feature")}

    features = []
    for f in feats.itertuples():
        e, n = eff.get(f.feature), nb.get(f.feature)
        pos = e[e["direction"] == 1] if e is not None else None
        neg = e[e["direction"] == -1] if e is not None else None
        features.append(
            {
                **base,
                "index": str(int(f.feature)),
                "creatorId": author,
                "hookName": row.hook,
                "maxActApprox": float(f.max_act),
                "frac_nonzero": float(f.density),
                "pos_str": [strings[i] for i in pos["token_id"]] if pos is not None else [],
                "pos_values": [float(v) for v in pos["value"]] if pos is not None else [],
                "neg_str": [strings[i] for i in neg["token_id"]] if neg is not None else [],
                "neg_values": [float(v) for v in neg["value"]] if neg is not None else [],
                "topkCosSimIndices": [int(i) for i in n["other"]] if n is not None else [],
                "topkCosSimValues": [float(v) for v in n["cosine"]] if n is not None else [],
            }
        )

    acts = []
    for r in queries.top_examples_all(db_path, sae, n_activations).itertuples():
        values = [float(v) for v in r.acts]
        top = int(np.argmax(values))
        acts.append(
            {
                **base,
                "id": f"{source_id}-{int(r.feature)}-{int(r.rank)}",
                "index": str(int(r.feature)),
                "tokens": [strings[i] for i in np.asarray(r.token_ids, dtype=np.int64)],
                "values": values,
                "maxValue": values[top],
                "maxValueTokenIndex": top,
                "minValue": float(min(values)),
                "creatorId": author,
            }
        )

    expl = []
    imported = explanations_store.for_sae(store, Path(db_path).name, sae).drop_duplicates(["feature", "source", "text"])
    items = [(int(r.feature), r.text, r.source) for r in imported.itertuples()]
    items += [(int(f), text, "human") for f, text in sorted((human or {}).items()) if text and text.strip()]
    seen: dict[int, int] = {}
    for f, text, source in items:
        k = seen[f] = seen.get(f, -1) + 1
        expl.append(
            {
                **base,
                "id": f"{source_id}-{f}-e{k}",
                "index": str(f),
                "description": text,
                "authorId": author,
                "typeName": "human" if source == "human" else f"imported:{source}",
                "explanationModelName": source,
            }
        )
    if not features:
        raise UserError(f"{sae} has no features to export")
    root = Path(out)
    return {
        "features": _write(root / "features" / "batch-0.jsonl.gz", features),
        "activations": _write(root / "activations" / "batch-0.jsonl.gz", acts),
        "explanations": _write(root / "explanations" / "batch-0.jsonl.gz", expl),
    }
