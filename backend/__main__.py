"""The one command line: `python -m backend <command> --help` explains each command."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from backend.errors import UserError

EPILOG = """examples:
  python -m backend demo                      # build data/demo.duckdb if missing, then serve the dashboard
  python -m backend precompute --model gpt2 --release gpt2-small-res-jb --sae-id 'blocks.*.hook_resid_pre' \\
      --corpus Skylion007/openwebtext --n-tokens 2000000 --device cuda --db data/gpt2.duckdb
  python -m backend info data/demo.duckdb
"""


def _precompute_parser(sub) -> None:
    from backend.cli_args import add_dataclass_args
    from backend.config import PrecomputeConfig

    p = sub.add_parser(
        "precompute",
        help="stream a corpus through a model and its SAEs into a feature database",
        description="One pass over the corpus computes, for every SAE, densities, activation "
        "histograms, top and quantile-sampled examples with context, token effects, neighbours, "
        "and per-layer quality metrics, then writes them to --db as one complete run.",
    )
    add_dataclass_args(p, PrecomputeConfig, skip=("saes",))
    p.add_argument(
        "--sae",
        action="append",
        default=[],
        metavar="FOLDER",
        help="local SAE folder in sae_lens's format (repeatable)",
    )
    p.add_argument(
        "--release",
        action="append",
        default=[],
        help="sae_lens pretrained release, e.g. gpt2-small-res-jb (repeatable; pairs with --sae-id)",
    )
    p.add_argument(
        "--sae-id",
        action="append",
        default=[],
        help="SAE id in the release, or a pattern such as 'blocks.*.hook_resid_pre'",
    )


def _sources(args) -> list:
    from backend.config import SAESource

    if len(args.release) != len(args.sae_id):
        if len(args.release) == 1:
            args.release = args.release * len(args.sae_id)
        else:
            raise UserError("give one --release per --sae-id (or one --release for all of them)")
    return [SAESource(path=p) for p in args.sae] + [
        SAESource(release=r, sae_id=i) for r, i in zip(args.release, args.sae_id)
    ]


def cmd_precompute(args) -> None:
    from backend.cli_args import dataclass_from_args
    from backend.config import PrecomputeConfig
    from backend.engine.pipeline import precompute

    cfg = dataclass_from_args(PrecomputeConfig, args, saes=_sources(args))
    out = precompute(cfg)
    if cfg.shard:
        print(f"shard state saved in {out}; combine all shards with: python -m backend merge-shards {out} ...")
    else:
        print(f"run {out} complete in {cfg.db}")
        print_info(cfg.db, as_json=False)


def cmd_merge(args) -> None:
    from backend.engine.pipeline import merge_shards

    run_id = merge_shards(args.shards, db=args.db, force=args.force)
    print(f"merged {len(args.shards)} shards into run {run_id}")


def print_info(db: str, as_json: bool) -> None:
    from backend.store.queries import database_info

    info = database_info(db)
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    for run in info["runs"]:
        print(
            f"run {run['run_id']}: {run['status']}  model={run['model']}  corpus={run['corpus']}  "
            f"tokens={run['n_tokens']}  context={run['context_len']}  {run['started_at']} -> {run['finished_at']}"
            + (f"  error: {run['error']}" if run.get("error") else "")
        )
    if not info["saes"]:
        print("no complete SAE in this database")
        return
    header = (
        f"{'sae':34} {'hook':26} {'arch':9} {'d_sae':>6} {'tokens':>9} {'L0':>7} {'EV':>6} "
        f"{'downstream':>22} {'dead':>6} {'dense':>6}"
    )
    print(header)
    for s in info["saes"]:
        ds = (
            f"{s['downstream_metric'] or '-'}={s['downstream_value']:.3f}" if s["downstream_value"] is not None else "-"
        )
        print(
            f"{s['sae'][:34]:34} {s['hook'][:26]:26} {s['architecture'][:9]:9} {s['d_sae']:>6} {s['n_tokens']:>9} "
            f"{s['l0']:>7.1f} {s['explained_variance']:>6.3f} {ds:>22} {s['dead_frac']:>6.1%} {s['dense_frac']:>6.1%}"
        )


def cmd_info(args) -> None:
    print_info(args.db, args.json)


def cmd_train(args) -> None:
    from backend.cli_args import dataclass_from_args
    from backend.config import TrainConfig
    from backend.engine.train import summary, train_saes

    cfg = dataclass_from_args(TrainConfig, args)
    print(summary(train_saes(cfg)))


def cmd_demo(args) -> None:
    from backend.demo import build_demo, serve

    db = build_demo(args.db, quick=args.quick, force=args.force)
    if not args.no_serve:
        serve(db, port=args.port)


def cmd_serve(args) -> None:
    from backend.demo import serve

    serve(None, port=args.port)


def cmd_labels(args) -> None:
    from backend import labels

    where = labels.location(args.labels)
    if args.action == "export":
        n = labels.export_labels(args.file, where, history=args.history)
        print(f"wrote {n} labels from {labels.describe(where)} to {args.file}")
    else:
        n = labels.import_labels(args.file, where)
        print(f"imported {n} new labels from {args.file} into {labels.describe(where)}")


def cmd_explanations(args) -> None:
    from pathlib import Path

    from backend.explanations import store

    where = args.store or store.location()
    if args.action == "import":
        from backend.explanations.formats import import_explanations

        got = import_explanations(
            args.path, args.db, args.sae, where, args.format, args.layer, args.module, args.scorer
        )
        print(f"imported {got} for {args.sae} from {args.path} into {where}")
        return
    from backend import labels
    from backend.explanations.neuronpedia_export import export

    if not (args.model_id and args.source_id):
        raise UserError("export needs --model-id (a model on Neuronpedia) and --source-id (e.g. 6-res-jb)")
    try:
        cur = labels.latest(labels.location(None), Path(args.db).name)
        human = {int(r.feature): r.description for r in cur[cur["sae"] == args.sae].itertuples() if r.description}
    except UserError:
        human = {}
    counts = export(
        args.db,
        args.sae,
        args.path,
        args.model_id,
        args.source_id,
        args.author,
        where,
        human,
        explanation_type=args.explanation_type,
        explanation_model=args.explanation_model,
        layers=args.layers,
    )
    print(", ".join(f"{n} {k}" for k, n in counts.items()) + f" written under {args.path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend",
        description="Precompute and serve SAE feature dashboards.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _precompute_parser(sub)

    m = sub.add_parser("merge-shards", help="combine `precompute --shard I/N` outputs into one complete run")
    m.add_argument("shards", nargs="+", help="shard folders written by precompute --shard")
    m.add_argument("--db", default=None, help="database to write (default: the one the shards were made for)")
    m.add_argument("--force", action="store_true", help="replace a complete run with the same id")

    i = sub.add_parser("info", help="what a feature database holds: runs and per-SAE metrics")
    i.add_argument("db")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    from backend.cli_args import add_dataclass_args
    from backend.config import TrainConfig

    t = sub.add_parser(
        "train-saes",
        help="train SAEs with sae_lens's trainer on a model's residual stream",
        description="Collects activations once for all hooks, trains one SAE per hook and "
        "architecture with sae_lens's SAETrainer, saves each in sae_lens's format and prints "
        "L0 / explained variance / dead fraction on held-out activations.",
    )
    add_dataclass_args(t, TrainConfig)

    d = sub.add_parser("demo", help="build the embedded demo database (if missing) and serve the dashboard")
    d.add_argument(
        "--db",
        default="data/demo.duckdb",
        help="database to build; the SAEs go to demo-saes/ beside it (default: %(default)s)",
    )
    d.add_argument("--no-serve", action="store_true", help="build only")
    d.add_argument("--force", action="store_true", help="rebuild even if the database exists")
    d.add_argument("--quick", action="store_true", help="tiny build (a few thousand tokens, narrow SAEs) for tests")
    d.add_argument("--port", type=int, default=8501, help="port to serve on (default: %(default)s)")

    s = sub.add_parser("serve", help="serve the dashboard over the databases in data/")
    s.add_argument("--port", type=int, default=8501, help="port to serve on (default: %(default)s)")

    lab = sub.add_parser("labels", help="export or import the team's feature labels (CSV, JSON, Parquet)")
    lab.add_argument("action", choices=["export", "import"])
    lab.add_argument("file", help="path ending in .csv, .json or .parquet")
    lab.add_argument(
        "--labels",
        default=None,
        metavar="PATH_OR_URL",
        help="labels store: an SQLite file or a postgresql:// URL (default: $SAE_DASHBOARD_LABELS, else "
        "labels.sqlite in $SAE_DASHBOARD_DATA or data/, the same store the dashboard uses)",
    )
    lab.add_argument("--history", action="store_true", help="export every verdict, not only the latest per labeler")

    ex = sub.add_parser(
        "explanations",
        help="import explanations (Neuronpedia, delphi) or export features + explanations for Neuronpedia",
        description="import: read a Neuronpedia explanation export (.json/.jsonl[.gz], or its folder with "
        "explanations/) or a delphi results folder (explanations/<module>_latent<N>.txt, scores/<scorer>/...) into "
        "the explanations store, checked against --sae in --db, all or nothing; every scorer's score is kept. "
        "export: write PATH/model.jsonl, sourceset.jsonl, source.jsonl and features/, activations/, explanations/ "
        "batch-N.jsonl.gz (1,024 features a file) as Neuronpedia's importer reads them from v1/MODEL/SOURCE/ "
        "of its dataset bucket (docs/explanations.md says how to get them there).",
    )
    ex.add_argument("action", choices=["import", "export"])
    ex.add_argument("path", help="file or folder to import; folder to export into")
    ex.add_argument("--db", required=True, help="feature database the explanations belong to")
    ex.add_argument("--sae", required=True, help="SAE (its name in the database)")
    ex.add_argument("--format", default="auto", choices=["auto", "neuronpedia", "delphi"], help="import format")
    ex.add_argument("--layer", default=None, help="import: Neuronpedia source id to take from a file of several")
    ex.add_argument("--module", default=None, help="import: delphi module to take from a folder of several")
    ex.add_argument(
        "--scorer",
        default=None,
        help="import: only this delphi scorer's scores (default: every scorer folder with per-example records)",
    )
    ex.add_argument("--model-id", default=None, help="export: Neuronpedia model id, e.g. gpt2-small")
    ex.add_argument("--source-id", default=None, help="export: Neuronpedia source id (layer), e.g. 6-res-jb")
    ex.add_argument(
        "--author",
        default=None,
        help="export (required): the id of a user in your Neuronpedia, creator of every row "
        "(a stock instance has the bot user clkht01d40000jv08hvalcvly)",
    )
    ex.add_argument(
        "--explanation-type",
        default=None,
        help="export: typeName of imported explanations, a name your Neuronpedia's ExplanationType table has "
        "(e.g. oai_token-act-pair after its config sync; default: none)",
    )
    ex.add_argument(
        "--explanation-model",
        default=None,
        help="export: explanationModelName of imported explanations, a name in your ExplanationModelType table "
        "(e.g. gpt-4o-mini; default: none)",
    )
    ex.add_argument("--layers", type=int, default=None, help="export: the model's layer count, if it is new there")
    ex.add_argument(
        "--store",
        default=None,
        help="explanations store (default: $SAE_DASHBOARD_EXPLANATIONS, else explanations.sqlite in the data folder)",
    )
    return parser


COMMANDS = {
    "precompute": cmd_precompute,
    "merge-shards": cmd_merge,
    "info": cmd_info,
    "train-saes": cmd_train,
    "demo": cmd_demo,
    "serve": cmd_serve,
    "labels": cmd_labels,
    "explanations": cmd_explanations,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: the run is marked unfinished; rerun the same command to restart it cleanly", file=sys.stderr
        )
        return 130
    except Exception as e:
        why = disk_full(e)
        if why is None:
            raise
        print(
            f"error: {why}; nothing half-written was kept, free some space and run the command again", file=sys.stderr
        )
        return 2
    return 0


def disk_full(e: BaseException) -> str | None:
    """A write that failed for lack of space (or a file size limit), from Python or DuckDB, as
    one line; None for any other failure, which keeps its traceback."""
    import errno

    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return f"could not write {e.filename or 'a file'}: {e.strerror}"
        text = str(e)
        if any(s in text for s in ("No space left on device", "File too large", "Disk quota exceeded")):
            return f"could not write: {text.splitlines()[0][:300]}"
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
