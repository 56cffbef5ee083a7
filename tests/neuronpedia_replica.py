"""A stand-in for Neuronpedia's database and JSONL importer, written here from its Prisma schema
and import route as they were read upstream (hijohnnylin/neuronpedia), to check an export
against the constraints that importer enforces:
- tables with Neuronpedia's required columns, primary keys, unique keys and foreign keys
  (User, Model, SourceSet, Source, Neuron, Activation, ExplanationType, ExplanationModelType,
  Explanation), and the `bot` user a stock instance seeds;
- model.jsonl, sourceset.jsonl, source.jsonl: one row each, created only if new, with no key
  that is not a column (Prisma's create rejects unknown fields);
- features/, activations/, explanations/: every batch-N.jsonl.gz read whole (escaped NULs, which
  PostgreSQL text cannot hold, replaced by spaces as the route does), the column list
  taken from its first line, inserted with jsonb_to_recordset ... ON CONFLICT DO NOTHING; a
  bad row fails its whole statement, a duplicate key is dropped silently, an empty features or
  activations file stops the import.
`load` returns, per table, the lines read and the rows inserted: an export loses nothing when
they are equal.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

BOT = "clkht01d40000jv08hvalcvly"
NODE_MAX_STRING = 2**29 - 24
"""V8's longest string, in UTF-16 code units: the importer reads a whole file into one"""

DDL = f"""
CREATE TABLE "User" (id text PRIMARY KEY, name text NOT NULL UNIQUE);
INSERT INTO "User" VALUES ('{BOT}', 'bot');
CREATE TABLE "Model" (
    id text PRIMARY KEY, "displayNameShort" text NOT NULL DEFAULT '', "displayName" text NOT NULL DEFAULT '',
    "creatorId" text NOT NULL REFERENCES "User" (id), "tlensId" text, dimension int,
    visibility text NOT NULL DEFAULT 'PRIVATE' CHECK (visibility IN ('PUBLIC', 'UNLISTED', 'PRIVATE')),
    "inferenceEnabled" boolean NOT NULL DEFAULT false, instruct boolean NOT NULL DEFAULT false,
    layers int NOT NULL, "neuronsPerLayer" int NOT NULL, owner text NOT NULL, website text,
    "createdAt" timestamp NOT NULL DEFAULT now()
);
CREATE TABLE "SourceSet" (
    "modelId" text NOT NULL REFERENCES "Model" (id), name text NOT NULL, description text NOT NULL,
    type text NOT NULL DEFAULT '', "creatorName" text NOT NULL, "creatorEmail" text,
    "creatorId" text NOT NULL REFERENCES "User" (id), urls text[] NOT NULL DEFAULT '{{}}',
    visibility text NOT NULL DEFAULT 'PRIVATE' CHECK (visibility IN ('PUBLIC', 'UNLISTED', 'PRIVATE')),
    "hasDashboards" boolean NOT NULL DEFAULT true, UNIQUE ("modelId", name)
);
CREATE TABLE "Source" (
    id text NOT NULL, "modelId" text NOT NULL REFERENCES "Model" (id), "setName" text NOT NULL,
    "creatorId" text NOT NULL REFERENCES "User" (id), "hasDashboards" boolean NOT NULL DEFAULT true,
    visibility text NOT NULL DEFAULT 'PRIVATE' CHECK (visibility IN ('PUBLIC', 'UNLISTED', 'PRIVATE')),
    notes text, UNIQUE ("modelId", id), FOREIGN KEY ("modelId", "setName") REFERENCES "SourceSet" ("modelId", name)
);
CREATE TABLE "Neuron" (
    "modelId" text NOT NULL REFERENCES "Model" (id), layer text NOT NULL, index text NOT NULL,
    "sourceSetName" text, "creatorId" text REFERENCES "User" (id), "maxActApprox" double precision DEFAULT 0,
    "hookName" text, "topkCosSimIndices" int[] NOT NULL DEFAULT '{{}}',
    "topkCosSimValues" double precision[] NOT NULL DEFAULT '{{}}', pos_str text[] NOT NULL DEFAULT '{{}}',
    pos_values double precision[] NOT NULL DEFAULT '{{}}', neg_str text[] NOT NULL DEFAULT '{{}}',
    neg_values double precision[] NOT NULL DEFAULT '{{}}', frac_nonzero double precision NOT NULL DEFAULT 0,
    UNIQUE ("modelId", layer, index), FOREIGN KEY ("modelId", layer) REFERENCES "Source" ("modelId", id)
);
CREATE TABLE "Activation" (
    id text PRIMARY KEY, tokens text[], "dataIndex" text, index text NOT NULL, layer text NOT NULL,
    "modelId" text NOT NULL, "dataSource" text, "maxValue" double precision NOT NULL,
    "maxValueTokenIndex" int NOT NULL, "minValue" double precision NOT NULL, "values" double precision[],
    "creatorId" text NOT NULL REFERENCES "User" (id),
    FOREIGN KEY ("modelId", layer, index) REFERENCES "Neuron" ("modelId", layer, index)
);
CREATE TABLE "ExplanationType" (name text PRIMARY KEY);
CREATE TABLE "ExplanationModelType" (name text PRIMARY KEY);
CREATE TABLE "Explanation" (
    id text PRIMARY KEY, "modelId" text NOT NULL, layer text NOT NULL, index text NOT NULL,
    description text NOT NULL, "authorId" text NOT NULL REFERENCES "User" (id), notes text,
    "scoreV1" double precision NOT NULL DEFAULT 0, "scoreV2" double precision,
    "typeName" text REFERENCES "ExplanationType" (name),
    "explanationModelName" text REFERENCES "ExplanationModelType" (name),
    FOREIGN KEY ("modelId", layer, index) REFERENCES "Neuron" ("modelId", layer, index)
);
"""

_ONE_ROW = (("model.jsonl", "Model", ["id"]), ("sourceset.jsonl", "SourceSet", ["modelId", "name"]),
            ("source.jsonl", "Source", ["modelId", "id"]))  # fmt: skip
_BATCHES = (("features", "Neuron"), ("activations", "Activation"), ("explanations", "Explanation"))


def create(con) -> None:
    con.execute(DDL)


def _types(con, table: str) -> dict[str, str]:
    rows = con.execute(
        "SELECT column_name, data_type, udt_name FROM information_schema.columns WHERE table_name = %s", [table]
    ).fetchall()
    return {c: (f"{u[1:]}[]" if d == "ARRAY" else u) for c, d, u in rows}


def load(con, folder: str | Path) -> dict[str, tuple[int, int]]:
    """Import an export folder as Neuronpedia's route does; {table: (lines read, rows inserted)}.
    Raises where the route would stop (psycopg's error, or ValueError for what fails in Node)."""
    root = Path(folder)
    out = {}
    for name, table, key in _ONE_ROW:
        line = json.loads((root / name).read_text())
        unknown = set(line) - set(_types(con, table))
        if unknown:
            raise ValueError(f"{name}: {sorted(unknown)} are not fields of {table}")
        where = " AND ".join(f'"{k}" = %s' for k in key)
        if con.execute(f'SELECT 1 FROM "{table}" WHERE {where}', [line[k] for k in key]).fetchone():
            out[table] = (1, 0)
            continue
        cols = list(line)
        names = ", ".join('"' + c + '"' for c in cols)
        marks = ", ".join(["%s"] * len(cols))
        con.execute(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', [line[c] for c in cols])
        out[table] = (1, 1)
    for sub, table in _BATCHES:
        types = _types(con, table)
        read = inserted = 0
        for f in sorted((root / sub).glob("*.jsonl.gz")):  # S3 lists keys in this order
            text = gzip.decompress(f.read_bytes()).decode("utf-8").replace("\\u0000", " ")  # as the route does
            if len(text) > NODE_MAX_STRING:
                raise ValueError(f"{f.name}: {len(text):,} characters, more than one Node string holds")
            lines = [json.loads(x) for x in text.strip().split("\n") if x.strip()]
            if not lines:
                if sub == "explanations":
                    continue
                raise ValueError(f"{f.name} is empty: JSON.parse('') stops the import")
            cols = list(lines[0])
            quoted = ", ".join(f'"{c}"' for c in cols if c in types)
            defs = ", ".join(f'"{c}" {types[c]}' for c in cols if c in types)
            cur = con.execute(
                f'INSERT INTO "{table}" ({quoted}) SELECT {quoted} FROM jsonb_to_recordset(%s::jsonb) AS t({defs}) '
                "ON CONFLICT DO NOTHING",
                [json.dumps(lines)],
            )
            read += len(lines)
            inserted += cur.rowcount
        out[table] = (read, inserted)
    return out
