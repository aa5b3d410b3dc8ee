"""Reading runs back from MongoDB: FiF's headline metrics of a run, and a table comparing runs.

Runs are linked through their lineage: a run's recorded DVC inputs (`info.lineage.dvc.deps`) match the
recorded outputs (`info.lineage.outputs`) of the run that produced them, so an evaluate run finds the train
run whose weights it scored, and that one the pretrain run of its base model.
"""

from __future__ import annotations

from typing import Any, Iterable

import yaml

HEADLINE = ("A_KA", "A_ZS", "GM")


def get_run(db: Any, run_id: int) -> dict[str, Any]:
    """The run document `run_id`; LookupError when there is none."""
    doc = db.runs.find_one({"_id": run_id})
    if doc is None:
        raise LookupError(f"no run {run_id} in the database (`clipflux compare` lists the runs)")
    return doc


def stage_of(doc: dict[str, Any]) -> str:
    """The DVC stage (`train@finetune`) of a run, else its Sacred stage (`train`)."""
    meta = doc.get("meta", {})
    return meta.get("dvc_stage") or meta.get("stage") or doc.get("experiment", {}).get("name", "?")


def _entries(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    lineage = (doc.get("info") or {}).get("lineage") or {}
    items = lineage.get("outputs", []) if key == "outputs" else (lineage.get("dvc") or {}).get("deps", [])
    return [e for e in items if e.get("md5")]


def producers(db: Any, doc: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(input, run that wrote exactly that input) for each of the run's inputs written by a tracked run."""
    found = []
    for dep in _entries(doc, "deps"):
        runs = list(db.runs.find({"info.lineage.outputs": {"$elemMatch": {"path": dep["path"], "md5": dep["md5"]}},
                                  "status": "COMPLETED"}).sort("_id", -1).limit(1))
        if runs:
            found.append((dep, runs[0]))
    return found


def consumers(db: Any, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs that read one of this run's outputs exactly as it wrote them."""
    found: dict[int, dict[str, Any]] = {}
    for out in _entries(doc, "outputs"):
        query = {"info.lineage.dvc.deps": {"$elemMatch": {"path": out["path"], "md5": out["md5"]}}}
        for run in db.runs.find(query):
            found[run["_id"]] = run
    return [found[k] for k in sorted(found)]


def headline(db: Any, run_id: int) -> dict[str, dict[str, list]]:
    """The run's `eval/A_KA`, `eval/A_ZS`, `eval/GM` metrics: {"A_KA": {"steps": [...], "values": [...]}}."""
    names = [f"eval/{k}" for k in HEADLINE]
    return {m["name"].split("/", 1)[1]: {"steps": m["steps"], "values": m["values"]}
            for m in db.metrics.find({"run_id": run_id, "name": {"$in": names}})}


def results(db: Any, run_id: int) -> dict[str, Any]:
    """A_KA, A_ZS and GM after every task and at the end, for an evaluate run (or the evaluations of a train run).

    Returns:
        {"run", "stage", "status", "experiment", "trajectory": [{"task", "A_KA", "A_ZS", "GM"}], "final": {...}},
        with the values exactly as logged; a train run gives {"run", "stage", "evaluated_by": [run ids]}.
    """
    doc = get_run(db, run_id)
    series = headline(db, run_id)
    if not series:
        evaluations = [r["_id"] for r in consumers(db, doc) if headline(db, r["_id"])]
        if evaluations:
            return {"run": run_id, "stage": stage_of(doc), "evaluated_by": evaluations}
        raise LookupError(f"run {run_id} ({stage_of(doc)}) logged no A_KA / A_ZS / GM and no evaluate run "
                          "read its outputs")
    steps = sorted({s for m in series.values() for s in m["steps"]})
    trajectory = [{"task": step, **{k: _at(series.get(k), step) for k in HEADLINE}} for step in steps]
    return {"run": run_id, "stage": stage_of(doc), "status": doc.get("status"),
            "experiment": doc.get("config", {}).get("experiment"), "trajectory": trajectory,
            "final": {k: trajectory[-1][k] for k in HEADLINE}}


def _at(metric: dict[str, list] | None, step: int) -> float | None:
    if not metric:
        return None
    values = [v for s, v in zip(metric["steps"], metric["values"]) if s == step]
    return values[-1] if values else None  # a resumed run may log a step twice: the later value stands


def output_index(docs: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """{(path, md5): the newest completed run that wrote it} over the given run documents: `producers` for many
    runs at once, with one read of the runs instead of a query per input."""
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in sorted(docs, key=lambda d: d["_id"]):
        if doc.get("status") == "COMPLETED":
            index.update({(out["path"], out["md5"]): doc for out in _entries(doc, "outputs")})
    return index


def effective_config(doc: dict[str, Any], index: dict[tuple[str, str], dict[str, Any]],
                     depth: int = 0) -> dict[str, Any]:
    """The run's config on top of the configs of the runs upstream of it (pretrain < train < evaluate), found in
    `index` (`output_index` of the runs)."""
    merged: dict[str, Any] = {}
    if depth < 5:
        for dep in _entries(doc, "deps"):
            if (dep["path"], dep["md5"]) in index:
                merged.update(effective_config(index[(dep["path"], dep["md5"])], index, depth + 1))
    merged.update(doc.get("config", {}))
    return merged


def lookup(config: dict[str, Any], dotted: str) -> Any:
    """`config["train"]["optim"]["lr"]` for "train.optim.lr"; None when missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def parse_filters(filters: Iterable[str]) -> dict[str, Any]:
    """["method=finetune", "train.optim.lr=3e-4"] → {"method": "finetune", "train.optim.lr": 0.0003}."""
    parsed = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"a filter is KEY=VALUE (a dotted config key), got {item!r}")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


TIC_KEYS = ("in_domain", "backward", "forward")  # TiC's evaluation matrix, per dataset (clipflux.metrics)


def tic_transfer(doc: dict[str, Any]) -> dict[str, float]:
    """An evaluate run's TiC results as flat columns, {"tic_ret.in_domain": ..., ...} (empty for FiF runs): the
    run's result is {dataset: {"in_domain", "backward", "forward", ...}} for a stream over the TiC world."""
    result = doc.get("result")
    if not isinstance(result, dict):
        return {}
    return {f"{dataset}.{key}": values[key] for dataset, values in sorted(result.items())
            if isinstance(values, dict) for key in TIC_KEYS if key in values}


def compare(db: Any, filters: dict[str, Any], stage: str | None = "evaluate",
            show: Iterable[str] = (), history: bool = False) -> list[dict[str, Any]]:
    """One row per run of `stage` whose (effective) config matches every filter, oldest first.

    Each row: run, stage, status, experiment, method, seed (the seed's index in the study), config (`config_id`:
    the same for the runs of one setting over seeds), continues (the runs this one resumed, oldest first:
    killed or requeued, `tracking.resume`), the final A_KA / A_ZS / GM (FiF) or each TiC dataset's in-domain,
    backward and forward transfer, and the `show` keys.

    A run that another one continued (`resumed_by`), replaced (`replaced_by`) or superseded is a part of that
    run, not a row of its own, unless `history` asks for every run.
    """
    rows = []
    everything = list(db.runs.find())
    index = output_index(everything)
    parts = {doc["_id"]: doc for doc in everything}
    superseded = {doc.get("info", {}).get("supersedes") for doc in everything}
    for doc in sorted((d for d in everything if not stage or d.get("meta", {}).get("stage") == stage),
                      key=lambda d: d["_id"]):
        if not history and (doc.get("resumed_by") is not None or doc.get("replaced_by") is not None
                            or doc["_id"] in superseded):
            continue
        config = effective_config(doc, index)
        if any(lookup(config, k) != v and str(lookup(config, k)) != str(v) for k, v in filters.items()):
            continue
        series = headline(db, doc["_id"])
        row = {"run": doc["_id"], "stage": stage_of(doc), "status": doc.get("status"),
               "experiment": config.get("experiment"), "method": config.get("method"),
               "seed": config.get("seed_index"), "config": config_id(config),
               "continues": ",".join(map(str, continued(doc, parts))) or None}
        row.update({k: series[k]["values"][-1] if series.get(k) else None for k in HEADLINE})
        row.update(tic_transfer(doc))
        row.update({k: lookup(config, k) for k in show})
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))  # FiF and TiC rows share one set of columns
    return [{k: row.get(k) for k in columns} for row in rows]


def continued(doc: dict[str, Any], runs: dict[Any, dict[str, Any]]) -> list[Any]:
    """The ids of the runs that `doc` continues, oldest first (a run resumed after a kill or a requeue names the run
    it continues in `info.resumed_from.run_id`)."""
    chain, seen = [], {doc["_id"]}
    origin = (doc.get("info", {}).get("resumed_from") or {}).get("run_id")
    while origin is not None and origin not in seen and origin in runs:
        chain.append(origin)
        seen.add(origin)
        origin = (runs[origin].get("info", {}).get("resumed_from") or {}).get("run_id")
    return chain[::-1]


def config_id(config: dict[str, Any]) -> str:
    """A short hash of a run's effective config without its seeds: the runs of one setting over several seeds
    share it, a run with any other parameter changed (a `dvc exp run -S ...`) does not."""
    import hashlib
    import json

    def unseeded(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: unseeded(v) for k, v in node.items() if k not in ("seed", "seed_index")}
        return node

    return hashlib.sha256(json.dumps(unseeded(config), sort_keys=True, default=str).encode()).hexdigest()[:8]


def group_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting (stage, experiment and config but the seeds): every numeric column's mean over its
    runs, with the sample standard deviation as `<column> sd` and the runs as `runs`; text columns are kept
    when all runs agree."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row.get("stage"), row.get("experiment"), row.get("config")), []).append(row)
    out = []
    for members in groups.values():
        merged: dict[str, Any] = {"runs": ",".join(str(m["run"]) for m in members), "n": len(members)}
        for key in members[0]:
            if key in ("run", "seed"):
                continue
            values = [m.get(key) for m in members]
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if numbers and len(numbers) == len(values):
                merged[key] = sum(numbers) / len(numbers)
                mean = merged[key]
                merged[f"{key} sd"] = (sum((v - mean) ** 2 for v in numbers) / (len(numbers) - 1)) ** 0.5 \
                    if len(numbers) > 1 else 0.0
            else:
                merged[key] = values[0] if len(set(map(str, values))) == 1 else "(differs)"
        out.append(merged)
    return out


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows sorted by a column (`-column`: descending); rows without a value go last."""
    column, descending = key.lstrip("-"), key.startswith("-")
    if rows and column not in rows[0]:
        raise ValueError(f"--sort {key}: no column {column!r}; the columns are {list(rows[0])}")
    present = [r for r in rows if r.get(column) is not None]
    missing = [r for r in rows if r.get(column) is None]
    return sorted(present, key=lambda r: (isinstance(r[column], str), r[column]), reverse=descending) + missing


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV (exact values, empty cells for missing ones)."""
    import csv
    import io

    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows as an aligned text table (floats with 4 decimals)."""
    if not rows:
        return "(no runs)"
    columns = columns or list(rows[0])
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
