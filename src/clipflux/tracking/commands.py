"""The tracking subcommands of `clipflux`: mongo, tracking upload, omniboard, results, compare, lineage."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from clipflux.tracking.store import StoreError, project_root, redact

COMMANDS = ("mongo", "tracking", "omniboard", "results", "compare", "lineage")


def add_parsers(sub: Any) -> None:
    """Register the tracking subcommands on an argparse subparsers object."""
    mongo = sub.add_parser("mongo", help="the embedded MongoDB server (when CLIPFLUX_MONGO_URL is not set)")
    mongo.add_argument("action", choices=("start", "stop", "status"))
    mongo.add_argument("--port", type=int, help="port for `start` (default: the last one, else a free one)")
    tracking = sub.add_parser("tracking", help="move runs between the local copy (runs/) and MongoDB")
    tracking.add_argument("action", choices=("upload",), help="upload runs that only runs/ holds, once")
    tracking.add_argument("--runs", type=Path, help="the file observer's folder (default: <project>/runs)")
    board = sub.add_parser("omniboard", help="serve Omniboard on 127.0.0.1 (installs it on first use)")
    board.add_argument("--port", type=int, default=9000)
    results = sub.add_parser("results", help="A_KA, A_ZS and GM after every task and at the end of a run")
    results.add_argument("run", type=int, help="a run id (an evaluate run, or a train run it evaluated)")
    results.add_argument("--json", action="store_true", help="print JSON (exact values)")
    compare = sub.add_parser("compare", help="a table of runs whose config matches KEY=VALUE filters")
    compare.add_argument("filters", nargs="*", metavar="KEY=VALUE", help="e.g. method=finetune train.optim.lr=3e-4")
    compare.add_argument("--stage", default="evaluate", help="pretrain, train, evaluate (default) or all")
    compare.add_argument("--show", nargs="*", default=[], metavar="KEY", help="config keys to add as columns")
    compare.add_argument("--history", action="store_true",
                         help="every run: also those another run resumed, replaced or superseded")
    compare.add_argument("--group", action="store_true", help="one row per experiment: mean and sd over its seeds")
    compare.add_argument("--sort", metavar="COLUMN", help="sort by a column; descending with a minus: --sort=-GM")
    compare.add_argument("--format", choices=("table", "csv", "json"), default="table")
    compare.add_argument("--json", action="store_true", help="the same as --format json")
    lineage = sub.add_parser("lineage", help="from a run or a reports/ file back to its commit, params and data")
    lineage.add_argument("target", help="a run id, or a file such as reports/experiments/finetune/metrics.json")
    lineage.add_argument("--json", action="store_true", help="the whole tree, machine-readable")
    lineage.add_argument("--statement", action="store_true", help="one paragraph of provenance for a paper")


@contextmanager
def _store(root: Path) -> Iterator[Any]:
    from clipflux.tracking.server import open_store

    with open_store(root) as store:
        if store is None:
            raise StoreError("MongoDB is turned off (CLIPFLUX_MONGO_URL=off): runs are in runs/ only")
        yield store


@contextmanager
def _database(store: Any) -> Iterator[Any]:
    db = store.database()
    try:
        yield db
    finally:
        db.client.close()


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=str))


def _mongo(args: argparse.Namespace, root: Path) -> None:
    from clipflux.tracking import server

    if args.action == "start":
        print(f"embedded MongoDB {server.start(root, args.port).describe()}")
    elif args.action == "stop":
        server.stop(root)
        print(f"embedded MongoDB {server.status(root).describe()}")
    else:
        print(f"embedded MongoDB {server.status(root).describe()}")


def _upload(args: argparse.Namespace, root: Path) -> None:
    from clipflux.tracking.upload import upload

    with _store(root) as store, _database(store) as db:
        report = upload(db, args.runs or root / "runs")
    for local, run_id, what in report:
        print(f"{local.folder.relative_to(root) if local.folder.is_relative_to(root) else local.folder}"
              f" -> run {run_id if run_id is not None else '-'}: {what}")
    changed = sum(what in ("added", "completed") for _, _, what in report)
    print(f"{changed} run(s) uploaded to {store}, {len(report) - changed} unchanged")


def _omniboard(args: argparse.Namespace, root: Path) -> None:
    from clipflux.tracking import omniboard

    folder = omniboard.install_dir(root)
    omniboard.install(folder)
    with _store(root) as store, _database(store) as db:
        omniboard.configure(db, folder)
        code = omniboard.serve(store, folder, args.port)
    sys.exit(code)


def _query(args: argparse.Namespace, root: Path) -> None:
    from clipflux.tracking import query, trace

    with _store(root) as store, _database(store) as db:
        if args.command == "results":
            out = query.results(db, args.run)
            if args.json:
                _print_json(out)
            elif "evaluated_by" in out:
                print(f"run {out['run']} ({out['stage']}) was evaluated by run(s) {out['evaluated_by']}: "
                      f"clipflux results {out['evaluated_by'][-1]}")
            else:
                print(f"run {out['run']}  {out['stage']}  {out['status']}")
                print(query.table(out["trajectory"], ["task", *query.HEADLINE]))
                print("final  " + "  ".join(f"{k} {v:.4f}" for k, v in out["final"].items() if v is not None))
        elif args.command == "compare":
            rows = query.compare(db, query.parse_filters(args.filters), None if args.stage == "all" else args.stage,
                                 args.show, history=args.history)
            rows = query.group_seeds(rows) if args.group else rows
            rows = query.sort_rows(rows, args.sort) if args.sort else rows
            form = "json" if args.json else args.format
            if form == "json":
                _print_json(rows)
            else:
                print(query.csv_text(rows) if form == "csv" else query.table(rows), end="" if form == "csv" else "\n")
        else:
            tree = trace.lineage_of(db, root, args.target)
            if args.json:
                _print_json(tree)
            else:
                print(trace.statement(tree) if args.statement else trace.render(tree))


def run(args: argparse.Namespace) -> None:
    """Carry out a tracking subcommand; errors print one clear line (credentials redacted) and exit 1."""
    from pymongo.errors import PyMongoError

    root = project_root()
    handlers = {"mongo": _mongo, "tracking": _upload, "omniboard": _omniboard}
    try:
        handlers.get(args.command, _query)(args, root)
    except (StoreError, LookupError, ValueError, PyMongoError) as err:
        print(f"clipflux {args.command}: {redact(str(err))}", file=sys.stderr)
        sys.exit(1)
