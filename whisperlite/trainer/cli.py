"""`whisperlite train` and `whisperlite evaluate`. `register(subparsers)` adds them to the main CLI;
`python -m trainer` runs them alone (and is what `torchrun` launches for multi-device training)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

from whisperlite.core.encoders import BACKENDS, DEFAULT_BACKEND
from whisperlite.core.topology import QUERY_ENCODER
from whisperlite.trainer.split import DEFAULT_MIN_INTERACTIONS
from whisperlite.trainer.experiment import DEFAULT_REQUEST_SEED
from whisperlite.trainer.train import (
    BIAS_INITS, LOSS_MIXES, POSITIVES, SAMPLERS, SEQUENCE_MODES, TASTE_MODES, USER_TABLE_MODES, TrainConfig,
)

DEFAULT_MODELS_DIR = os.environ.get("WHISPERLITE_MODELS", "models")

# TrainConfig fields exposed as flags, with help; the defaults come from TrainConfig itself.
TRAIN_FLAGS = {
    "max_epochs": "most epochs; training stops earlier when validation Recall@10 stalls",
    "patience": "epochs without a validation Recall@10 gain before stopping",
    "batch_size": "examples per step (also the in-batch negatives of the contrastive loss)",
    "lr": "learning rate of the network",
    "user_lr": "learning rate of the user embedding table",
    "hidden": "hidden units of the fusion MLP",
    "dropout": "dropout in the fusion MLP",
    "bce_weight": "weight of the binary cross-entropy loss (0 = contrastive only)",
    "contrastive_weight": "weight of the InfoNCE loss (0 = BCE only)",
    "temperature": "initial InfoNCE temperature",
    "negatives_per_sampler": "negatives each BCE sampler draws per example",
    "hard_pool": "hard negatives are drawn from the request's this many nearest items",
    "user_dropout": "share of examples trained without the user's table row (the recent-items path)",
    "no_user_rate": "share of examples trained without any taste (the text-only path)",
    "residual_l2": "L2 penalty on the user table rows",
    "validation_cases": "validation cases ranked per epoch (0 = all)",
    "select_epochs": "with an auto setting: epochs each candidate trains before the best goes on (0 = all)",
    "taste_window": "history items an attention taste reads (the most recent)",
    "sequence_epochs": "most epochs of the SASRec sequence part (bounds its training time)",
    "seed": "random seed (model init, sampling, shuffling)",
}


# TrainConfig fields with a fixed set of values: (values, help).
CHOICE_FLAGS = {
    "positives": (POSITIVES, "where item text is built from training requests: train on targets without the example's "
                  "own request (leave_one_out) or on the catalog vectors"),
    "user_table": (USER_TABLE_MODES, "learned: train a residual row per user; off: taste = the history summary alone; "
                   "auto: train both, keep the better on validation Recall@10"),
    "taste": (TASTE_MODES, "the user's taste: mean of the history items, attention over the recent ones keyed by the "
              "request, none (no user signal), auto: the best of the three on validation (none only when no taste helps)"),
    "bias_init": (BIAS_INITS, "start the BCE head's bias at zero or calibrated (a random request-item pair at logit 0)"),
    "sequence": (SEQUENCE_MODES, "the SASRec sequence part fused with the network's score: auto = train it and ship the "
                 "fusion if validation prefers it, on = always ship it (the best text weight below 1), off = never"),
    "loss_mix": (LOSS_MIXES, "given: --bce-weight and --contrastive-weight as set; auto: that composite or InfoNCE only, "
                 "the better on validation"),
}


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data and encoder")
    # The same env vars the query encoder service reads, so one setting drives training and serving.
    backend_env, model_env = f"{QUERY_ENCODER.env_prefix}_BACKEND", f"{QUERY_ENCODER.env_prefix}_MODEL"
    group.add_argument("--encoder-backend", default=os.environ.get(backend_env, DEFAULT_BACKEND), choices=BACKENDS,
                       help=f"encoder of requests and items (env {backend_env}); must match the catalog's")
    group.add_argument("--encoder-model", default=os.environ.get(model_env) or None,
                       help=f"encoder weights: local path or hub name (env {model_env}; default: bundled MiniLM)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (encoder and training)")
    group.add_argument("--cache-dir", default=None, help="embedding cache (default $WHISPERLITE_CACHE_DIR or ~/.cache/whisperlite)")
    group.add_argument("--min-interactions", type=int, default=DEFAULT_MIN_INTERACTIONS,
                       help="users with fewer interactions are only used for training")
    group.add_argument("--request-seed", type=int, default=DEFAULT_REQUEST_SEED, help="seed of the request simulator")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name, text in TRAIN_FLAGS.items():
        default = defaults[name]
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), default=default,
                           help=f"{text} (default {default})")
    group.add_argument("--negatives", default=",".join(defaults["negatives"]),
                       help=f"BCE negative samplers, comma separated, from {', '.join(SAMPLERS)} (default %(default)s)")
    group.add_argument("--fixed-temperature", action="store_true", help="keep the InfoNCE temperature fixed")
    group.add_argument("--contrastive-sampled-negatives", action="store_true",
                       help="add the BCE samplers' negatives to the InfoNCE softmax")
    for name, (choices, text) in CHOICE_FLAGS.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=defaults[name], choices=list(choices),
                           help=f"{text} (default %(default)s)")


def _train_config(args: argparse.Namespace) -> TrainConfig:
    values = {name: getattr(args, name) for name in (*TRAIN_FLAGS, *CHOICE_FLAGS)}
    negatives = tuple(s.strip() for s in args.negatives.split(",") if s.strip())
    return TrainConfig(**values, negatives=negatives, learn_temperature=not args.fixed_temperature,
                       device=args.device,
                       contrastive_sampled_negatives=args.contrastive_sampled_negatives)


def _embedding_cache(args: argparse.Namespace):
    from whisperlite.trainer.embeddings import EmbeddingCache

    return EmbeddingCache(args.encoder_backend, args.encoder_model, device=args.device, cache_dir=args.cache_dir)


def _experiment(args: argparse.Namespace, data_dir: str | Path, cache=None, require_test_cases: bool = False):
    from whisperlite.trainer.experiment import prepare_experiment

    return prepare_experiment(
        data_dir, cache or _embedding_cache(args), args.min_interactions, args.request_seed,
        leave_one_out_positives=args.positives == "leave_one_out", require_test_cases=require_test_cases,
    )


def _setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _unwritable(path: Path) -> str | None:
    """Why the command cannot write under `path`, found by creating it (and the folders missing above it) and a file in
    it, or None: os.access answered yes to root for /proc, and the trained model was lost to a traceback at the end.
    The folders this made are removed again: a run refused later leaves nothing behind."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        return error.strerror or str(error)
    finally:
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
    return None


def _run_train(args: argparse.Namespace) -> int:
    from whisperlite.trainer.train import init_distributed, save_model_dir, train_model

    _setup_logging()
    try:
        config = _train_config(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if (problem := _unwritable(Path(args.out))) is not None:  # said now, not as a traceback once training is done (9 minutes on the demo data)
        print(f"error: --out {args.out}: cannot write there ({problem})", file=sys.stderr)
        return 2
    distributed = init_distributed()
    import torch.distributed as dist

    rank = dist.get_rank() if distributed else 0
    # Rank 0 fills the embedding cache first; the others then read it.
    if rank != 0:
        dist.barrier()
    try:
        experiment = _experiment(args, args.data)
    except (FileNotFoundError, ValueError) as err:  # a dataset that is missing or unusable: say why, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    if distributed and rank == 0:
        dist.barrier()
    started = time.perf_counter()
    result = train_model(experiment, config, name=args.name or experiment.dataset.name, progress=not args.quiet)
    if rank == 0:
        try:
            directory = save_model_dir(result, args.out)
        except OSError as error:  # writable at the start, not now (a full disk)
            print(f"error: --out {args.out}: the trained model could not be saved: {error}", file=sys.stderr)
            return 1
        metrics = result.model.manifest["metrics"]["validation"]
        validation = ("validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())) if metrics else "no validation cases, the last epoch kept"
        print(f"trained {result.model.version} in {time.perf_counter() - started:.1f}s (best epoch {result.best_epoch}): {validation}")
        print(f"model directory: {directory}")
    if distributed:
        dist.destroy_process_group()
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from whisperlite.trainer.evaluate import METHODS, check_model_data, evaluate

    _setup_logging()
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if args.all and args.data:  # --all would evaluate every dataset under --data-root, not this one
        print("error: --all evaluates every dataset under --data-root; give --data or --all, not both", file=sys.stderr)
        return 2
    if not methods:
        print(f"error: --methods: name at least one of {', '.join(METHODS)}", file=sys.stderr)
        return 2
    if unknown:
        print(f"error: --methods: unknown {unknown}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    try:
        config = _train_config(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Said now, not as a traceback once the methods have trained.
    for flag, path in (("--out", args.out or ("docs/results" if args.all else "")), ("--models-out", args.models_out)):
        if path and (problem := _unwritable(Path(path))) is not None:
            print(f"error: {flag} {path}: cannot write there ({problem})", file=sys.stderr)
            return 2
    if args.all:
        from whisperlite.trainer.report import evaluate_all

        cache = _embedding_cache(args)  # one encoder for every dataset
        evaluate_all(
            data_root=Path(args.data_root),
            out_root=Path(args.out or "docs/results"),
            docs_path=Path(args.docs),
            experiment_factory=lambda data_dir: _experiment(args, data_dir, cache, require_test_cases=True),
            config=config,
            methods=methods,
            keep_seen=args.keep_seen,
            progress=not args.quiet,
            reuse=args.reuse,
            min_interactions=args.min_interactions,
            run_settings={"encoder": cache.encoder_name, "request_seed": args.request_seed},
            models_out=Path(args.models_out) if args.models_out else None,
        )
        return 0
    if not args.data or not args.out:
        print("error: --data and --out are required (or --all)", file=sys.stderr)
        return 2
    from whisperlite.core.personalization import PersonalizationModel

    try:
        model = PersonalizationModel.load(args.model) if args.model else None
    except Exception as err:  # a broken file fails in any way (JSON, zip, torch): each one is the model's refusal
        print(f"error: --model {args.model}: cannot be loaded: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    try:
        if model is not None and (given := _data_hash_if_readable(args.data)) is not None:
            check_model_data(model, args.data, given)  # before any text is embedded (it came after ~2 minutes); again with the split
        experiment = _experiment(args, args.data, require_test_cases=True)
        evaluate(experiment, args.out, model=model, config=config, methods=methods, keep_seen=args.keep_seen,
                 models_out=args.models_out, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _data_hash_if_readable(data_dir: str) -> str | None:
    """None where the files cannot be read: reading the dataset then says why, naming them."""
    from whisperlite.core.dataset import data_hash

    try:
        return data_hash(data_dir)
    except OSError:
        return None


def register(subparsers: argparse._SubParsersAction) -> None:
    from whisperlite.trainer.evaluate import METHODS

    train = subparsers.add_parser(
        "train",
        help="train the personalization model on a prepared dataset",
        description="Train WhisperLite on DATA's train split (early stopping on validation Recall@10) and "
        "write a versioned model directory under OUT. With several GPUs launch it with torchrun "
        "(python -m torch.distributed.run --nproc_per_node=N -m trainer train ...) to train with DDP.",
    )
    train.add_argument("--data", required=True, help="canonical dataset directory (whisperlite data prepare)")
    train.add_argument("--out", default=DEFAULT_MODELS_DIR, help="parent of the versioned model directory (env WHISPERLITE_MODELS, default %(default)s)")
    train.add_argument("--name", default=None, help="model name (default: the dataset name)")
    _add_data_flags(train)
    _add_train_flags(train)
    train.set_defaults(func=_run_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="compare WhisperLite with baselines on a dataset's test split",
        description="Rank the full catalog for every test case with each method and write metrics.json, "
        "results.md and metrics.png to OUT. Trains what it needs when no --model is given.",
    )
    evaluate.add_argument("--data", default=None, help="canonical dataset directory")
    evaluate.add_argument("--model", default=None, help="trained model directory for the whisperlite method (default: train one)")
    evaluate.add_argument("--out", default=None, help="output directory (with --all: default docs/results)")
    evaluate.add_argument("--all", action="store_true", help="every dataset of ../shared/datasets (prepared on demand); writes --docs")
    evaluate.add_argument("--data-root", default="data", help="with --all: where prepared datasets live (default %(default)s)")
    evaluate.add_argument("--docs", default="docs/results.md", help="with --all: the results document to write (default %(default)s)")
    evaluate.add_argument("--reuse", action="store_true",
                          help="with --all: keep a dataset's metrics.json made from the same data, methods and settings")
    evaluate.add_argument("--methods", default=",".join(METHODS), help="comma separated subset of %(default)s")
    evaluate.add_argument("--keep-seen", action="store_true", help="keep items the user already interacted with in the ranking")
    evaluate.add_argument("--models-out", default=None, help="also save the models trained for the comparison here")
    _add_data_flags(evaluate)
    _add_train_flags(evaluate)
    evaluate.set_defaults(func=_run_evaluate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
