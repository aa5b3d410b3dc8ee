"""The `clipflux` command: helpers around the pipeline that are not DVC stages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipflux.data import commands as data_commands
from clipflux.data.cards import write_cards
from clipflux.errors import reported
from clipflux.stream_files import write_streams
from clipflux.tracking import commands as tracking_commands


def main(argv: list[str] | None = None) -> None:
    """The `clipflux` command: a bad parameter or file ends it with one line naming it (exit status 2)."""
    reported(lambda: run(argv), "clipflux")


def run(argv: list[str] | None = None) -> None:
    """Parse `argv` (default: the command line) and run the command."""
    parser = argparse.ArgumentParser(prog="clipflux", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    streams = sub.add_parser("write-streams", help="regenerate the stream files of the synthetic world")
    streams.add_argument("--out", type=Path, default=Path("streams"))
    streams.add_argument("--seed", type=int, default=0)
    streams.add_argument("--model", type=Path, help="base model weights: also write the similarity and performance "
                                                    "orders")
    streams.add_argument("--shards", type=Path, default=Path("data/shards"))
    cards = sub.add_parser("datasets", help="write a dataset card (markdown) and example grids (PNG) per dataset")
    cards.add_argument("--shards", type=Path, default=Path("data/shards"))
    cards.add_argument("--out", type=Path, default=Path("reports/datasets"))
    data_commands.add_parsers(sub)
    budget = sub.add_parser("budget", help="FiF's Table 4: per method GFLOPs, memory, MAF and steps per task")
    budget.add_argument("--model", help="an architecture (default: params.yaml model.name)")
    budget.add_argument("--image-size", type=int, help="image side in pixels (default: the architecture's)")
    budget.add_argument("--batch-size", type=int, help="default: params.yaml train.optim.batch_size")
    budget.add_argument("--tasks", type=int, nargs="+",
                        help="tasks of FiF's stream (20 50 100 200: a column each); without --finetune-steps, full "
                             "finetuning trains FiF's 28,400 steps of 512 samples split into them (1420 for 20)")
    budget.add_argument("--finetune-steps", type=int,
                        help="full finetuning's steps per task (default: --tasks, else train.samples_per_task / batch)")
    budget.add_argument("--gflops-per-task", type=float, help="a budget in GFLOPs per task instead (FiF's unit)")
    budget.add_argument("--measure", choices=["maf", "flops"], default="maf",
                        help="memory-adjusted FLOPs (FiF) or FLOPs alone")
    budget.add_argument("--methods", nargs="+", help="default: every method of params.yaml")
    budget.add_argument("--set", nargs="+", default=[], metavar="METHOD.KEY=VALUE",
                        help="override a method's hyperparameter of params.yaml, e.g. ewc.max_fim_samples=50000")
    budget.add_argument("--cuda", action="store_true", help="memory: the CUDA allocator's peak over real steps")
    probe = sub.add_parser("linear-probe", help="a linear probe on a model's frozen image features, per adaptation "
                                                "dataset, beside its zero-shot accuracy")
    probe.add_argument("--model", type=Path, required=True, help="weights, e.g. models/base.pt or "
                                                                 "models/finetune/task_004.pt")
    probe.add_argument("--shards", type=Path, default=Path("data/shards"))
    probe.add_argument("--datasets", nargs="+", help="default: every adaptation dataset with a classification task")
    probe.add_argument("--weight-decay", type=float, default=1e-4, help="L2 strength of the logistic regression")
    probe.add_argument("--out", type=Path, help="also write the table here (markdown)")
    deps = sub.add_parser("stage-deps", help="check dvc.yaml's code dependencies against the import graph")
    deps.add_argument("--write", action="store_true", help="rewrite the src/ and configs/ entries of dvc.yaml")
    tracking_commands.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "write-streams":
        model = tokenizer = None
        if args.model:
            from clipflux.config import load_params
            from clipflux.models import create_model, load_weights

            model, tokenizer = create_model(load_params().model)
            load_weights(model, args.model)
        for path in write_streams(args.out, args.seed, model, args.shards, tokenizer):
            print(f"wrote {path}")
    elif args.command == "datasets":
        print(f"wrote {write_cards(args.shards, args.out)}")
    elif args.command in data_commands.COMMANDS:
        data_commands.run(args)
    elif args.command == "budget":
        print_budget(args)
    elif args.command == "stage-deps":
        stage_deps(args.write)
    elif args.command == "linear-probe":
        linear_probe(args)
    elif args.command in tracking_commands.COMMANDS:
        tracking_commands.run(args)


def linear_probe(args: argparse.Namespace) -> None:
    """`clipflux linear-probe`: print (and with --out write) the zero-shot and linear-probe table of a model."""
    from clipflux import probe
    from clipflux.config import load_params
    from clipflux.models import create_model, load_weights

    model, tokenizer = create_model(load_params().model)
    load_weights(model, args.model)
    datasets = args.datasets or probe.classification_datasets(args.shards)
    text = f"Linear probe of {args.model} (weight decay {args.weight_decay:g}), test accuracy in percent:\n\n"
    text += probe.table(probe.linear_probe(model, tokenizer, args.shards, datasets, args.weight_decay)) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def stage_deps(rewrite: bool) -> None:
    """`clipflux stage-deps`: print each stage's missing and stale code dependencies; exit 1 if there are any."""
    from clipflux import stagedeps

    root = Path.cwd()
    results = stagedeps.check(root)
    if rewrite:
        stagedeps.write(root, results)
        results = stagedeps.check(root)
    wrong = [r for r in results if r.missing or r.stale]
    for r in wrong:
        print(f"{r.stage}: missing {list(r.missing)}; stale {list(r.stale)}")
    if wrong:
        raise SystemExit(f"dvc.yaml: {len(wrong)} stage(s) with wrong code dependencies; "
                         "`clipflux stage-deps --write` derives them")
    print(f"dvc.yaml: the code dependencies of {len(results)} stages match their imports")


def print_budget(args: argparse.Namespace) -> None:
    """`clipflux budget`: profile the methods on the model and print the table (settings from params.yaml)."""
    import dataclasses
    import math

    import yaml

    from clipflux import budget
    from clipflux.config import BudgetConfig, ConfigError, load_params
    from clipflux.methods import check_params
    from clipflux.models import image_size

    params = check_params(load_params())
    methods = {name: dict(raw or {}) for name, raw in params.methods.items()}
    for item in args.set:
        key, _, value = item.partition("=")
        name, _, field = key.partition(".")
        if not (field and value) or name not in methods:
            raise ConfigError(f"--set {item}: expected METHOD.KEY=VALUE with a method of params.yaml")
        methods[name][field] = yaml.safe_load(value)
    params = dataclasses.replace(params, methods=methods)
    name = args.model or params.model.name
    batch_size = args.batch_size or params.train.optim.batch_size
    if args.finetune_steps and args.tasks and len(args.tasks) > 1:
        raise ConfigError("--finetune-steps: give at most one --tasks with it")
    tasks = args.tasks or [None]
    steps = {t: args.finetune_steps or (budget.fif_finetune_steps(t, batch_size) if t else
                                        math.ceil(params.train.samples_per_task / batch_size)) for t in tasks}
    cfg = BudgetConfig(measure=args.measure, gflops_per_task=args.gflops_per_task)
    model = budget.build_model(name, args.image_size)
    names = args.methods or list(params.methods)
    found = budget.profiles(params, names, model, batch_size, cuda=args.cuda)
    columns = {t: [budget.allot(found[m], found["finetune"], cfg, steps[t]) for m in names] for t in tasks}
    budgets = "; ".join(f"{rows[0]['budget_gflops_per_task']:,.0f} GFLOPs (full finetuning: "
                        f"{rows[0]['finetune_steps_per_task']:,} steps{f', T={t}' if t else ''})"
                        for t, rows in columns.items())
    memory = "CUDA allocator peak" if args.cuda else "accounted"
    print(f"{name} at {image_size(model)} px, batch {batch_size}; budget per task ({args.measure}): {budgets}; "
          f"memory {memory}; GFLOPs as FiF counts them (2 per multiply-add)\n")
    print(budget.table(columns))


if __name__ == "__main__":
    main()
