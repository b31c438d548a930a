"""Training the personalization network on cached embeddings, and exporting the model directory.

Per example (user u, request q, target item i from the train split):
* the user's taste summary leaves the target out, so it never leaks into its own taste: the mean
  of u's other train items ("mean"), or attention keyed by q over the `taste_window` train items
  nearest to i in u's sequence, distance = how many positions away ("attention"; at serving time
  the window is the last items, distance 1 = the newest); "none" never sees a user (request_only);
  with probability `user_dropout` the table residual is left out (the recent-items path) and
  with probability `no_user_rate` the whole taste (the text-only path);
* BCE on the positive and on negatives drawn by the configured samplers
  (uniform, popularity, in_batch, hard = the request's nearest items in the text tower);
* InfoNCE between personalized queries and the batch's target items, temperature learnable
  (optionally with the sampled negatives added to the softmax);
* L2 on the table residuals of the batch's users.
Early stopping on validation Recall@10, computed by exporting the model and ranking the full
catalog through the same code as `whisperlite evaluate`. Settings left "auto" (taste, loss mix,
user table) are chosen on validation: every candidate trains `select_epochs` epochs, the best
continues to the end (so the losers cost only their short runs).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from whisperlite.core.progress import bar_disabled
from whisperlite.trainer.experiment import Experiment
from whisperlite.trainer.methods import WhisperLite, validation_metrics
from whisperlite.trainer.sequential import SASRecConfig, fit_sequence_part
from whisperlite.core.dataset import ITEM_TEXT_TRAIN_REQUESTS
from whisperlite.core.devices import torch_device
from whisperlite.core.personalization import (
    DEFAULT_TASTE_WINDOW,
    TASTE_ATTENTION,
    TASTE_MEAN,
    TASTE_NONE,
    TASTES,
    PersonalizationModel,
    PersonalizationNetwork,
    UserHistories,
)

log = logging.getLogger(__name__)

SAMPLERS = ("uniform", "popularity", "in_batch", "hard")
USER_TABLE_MODES = ("auto", "learned", "off")
TASTE_MODES = ("auto",) + TASTES
LOSS_MIXES = ("auto", "given")
POSITIVES = ("leave_one_out", "catalog")
BIAS_INITS = ("zero", "calibrated")
SEQUENCE_MODES = ("auto", "on", "off")
# Numeric settings by the range a run can use; each also must be finite.
AT_LEAST_ONE = ("hidden", "negatives_per_sampler", "hard_pool", "batch_size", "max_epochs", "patience", "sequence_epochs", "taste_window")
ABOVE_ZERO = ("logit_scale", "temperature", "lr", "user_lr")
AT_LEAST_ZERO = ("taste_weight", "bce_weight", "contrastive_weight", "weight_decay", "residual_l2", "validation_cases", "select_epochs", "seed")
SHARES = ("dropout", "user_dropout", "no_user_rate")


@dataclass
class TrainConfig:
    # network (saved in the manifest; PersonalizationModel.load rebuilds from these)
    hidden: int = 512
    dropout: float = 0.1
    taste_weight: float = 0.5
    logit_scale: float = 20.0
    temperature: float = 0.05
    learn_temperature: bool = True
    # taste: "mean" (of every history item), "attention" (query-aware over the last taste_window
    # items, with recency), "none" (no user signal: request_only), "auto" = the best of the three on validation
    taste: str = "auto"
    taste_window: int = DEFAULT_TASTE_WINDOW
    # BCE head bias at the start: "calibrated" = -logit_scale * the mean cosine of a training request with a
    # random item, so a random pair starts at logit 0; with "zero" on a small dataset (yelp: random cosine 0.25,
    # logit 5) Adam's first steps turn the MLP into one constant vector that pushes every item down and BCE
    # alone collapses (docs/model.md: the BCE investigation)
    bias_init: str = "calibrated"
    # loss
    bce_weight: float = 0.25
    contrastive_weight: float = 1.0
    negatives: tuple[str, ...] = ("uniform",)
    negatives_per_sampler: int = 4
    hard_pool: int = 50
    popularity_power: float = 0.75
    contrastive_sampled_negatives: bool = False
    # "given" = bce_weight and contrastive_weight as set; "auto" = that composite or InfoNCE only
    # (bce_weight 0), the better on validation
    loss_mix: str = "auto"
    # positives where item text is built from training requests (yelp): "catalog" = the catalog
    # vector (it contains the example's own request), "leave_one_out" = the target without that
    # request (rows with nothing left are skipped); catalog won on validation (docs/model.md)
    positives: str = "catalog"
    # users: "learned" trains a residual table row per user, "off" keeps the taste = the history
    # summary, "auto" tries both on validation; off by default: validation never chose the table
    # on any dataset (docs/model.md)
    user_table: str = "off"
    user_lr: float = 1e-3
    user_dropout: float = 0.2
    no_user_rate: float = 0.05
    residual_l2: float = 1e-3
    # sequence: "auto" trains SASRec after the network and ships the late fusion when validation prefers it
    # (core/sequence.py); "on" ships it with the best text weight below 1; "off" never trains it.
    # sequence_epochs caps SASRec's epochs: on amazon (23k items, full softmax) each takes about 31 s on
    # 2 cores, so 6 keep the whole training inside 10 minutes (docs/model.md); movielens stops before it
    sequence: str = "auto"
    sequence_epochs: int = 6
    # optimisation
    batch_size: int = 1024
    lr: float = 5e-3
    weight_decay: float = 1e-4
    max_epochs: int = 20
    patience: int = 3
    validation_cases: int = 10000
    # epochs each candidate of an "auto" setting trains before the best is chosen (0 = all epochs)
    select_epochs: int = 2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        self._check_ranges()
        self.negatives = tuple(self.negatives)
        unknown = [s for s in self.negatives if s not in SAMPLERS]
        if unknown:
            raise ValueError(f"negatives: unknown sampler(s) {unknown}; choose from {', '.join(SAMPLERS)}")
        if self.bce_weight < 0 or self.contrastive_weight < 0 or self.bce_weight + self.contrastive_weight == 0:
            raise ValueError("bce_weight, contrastive_weight: must be >= 0 and not both 0")
        if self.positives not in POSITIVES:
            raise ValueError(f"positives: must be one of {', '.join(POSITIVES)}, got {self.positives!r}")
        if self.user_table not in USER_TABLE_MODES:
            raise ValueError(f"user_table: must be one of {', '.join(USER_TABLE_MODES)}, got {self.user_table!r}")
        if self.taste not in TASTE_MODES:
            raise ValueError(f"taste: must be one of {', '.join(TASTE_MODES)}, got {self.taste!r}")
        if self.loss_mix not in LOSS_MIXES:
            raise ValueError(f"loss_mix: must be one of {', '.join(LOSS_MIXES)}, got {self.loss_mix!r}")
        if self.bias_init not in BIAS_INITS:
            raise ValueError(f"bias_init: must be one of {', '.join(BIAS_INITS)}, got {self.bias_init!r}")
        if self.sequence not in SEQUENCE_MODES:
            raise ValueError(f"sequence: must be one of {', '.join(SEQUENCE_MODES)}, got {self.sequence!r}")
        if self.bce_weight > 0 and not self.negatives:
            raise ValueError("negatives: BCE needs at least one negative sampler")

    def _check_ranges(self) -> None:
        for name in AT_LEAST_ONE + ABOVE_ZERO + AT_LEAST_ZERO + SHARES + ("popularity_power",):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name}: must be a finite number, got {value}")
        for names, bad, rule in (
            (AT_LEAST_ONE, lambda v: v < 1, "must be at least 1"),
            (ABOVE_ZERO, lambda v: v <= 0, "must be > 0"),
            (AT_LEAST_ZERO, lambda v: v < 0, "must be >= 0"),
            (SHARES, lambda v: not 0 <= v <= 1, "must be between 0 and 1"),
        ):
            for name in names:
                if bad(getattr(self, name)):
                    raise ValueError(f"{name}: {rule}, got {getattr(self, name)}")

    def network_kwargs(self) -> dict:
        if self.taste == "auto":
            raise ValueError("taste: a network is built for a chosen taste, not auto")
        keys = ("hidden", "dropout", "taste_weight", "logit_scale", "temperature", "learn_temperature", "taste", "taste_window")
        return {k: getattr(self, k) for k in keys}

    def replace(self, **changes) -> TrainConfig:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return TrainConfig(**values)


@dataclass
class TrainResult:
    model: PersonalizationModel
    history: list[dict] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def hard_negative_pools(queries: np.ndarray, item_vectors: np.ndarray, pool: int, device: torch.device) -> torch.Tensor:
    """(n, pool) nearest items to each query in the text tower (targets are masked later)."""
    items = torch.from_numpy(item_vectors).to(device)
    q = torch.from_numpy(np.ascontiguousarray(queries)).to(device)
    out = []
    for start in range(0, len(q), 2048):
        out.append((q[start : start + 2048] @ items.T).topk(min(pool, items.shape[0]), dim=1).indices)
    return torch.cat(out)


class TrainingStep(nn.Module):
    """The composite loss for one batch; a module so DDP can wrap it as a whole."""

    def __init__(self, network: PersonalizationNetwork, config: TrainConfig):
        super().__init__()
        self.network = network
        self.config = config

    def forward(self, q, base, window, user_index, drop_taste, pos, negatives, negative_mask, target_ids):
        """`base`: (B, d) history sums for a mean taste; `window`: (vectors, distances, mask) for attention."""
        config, network = self.config, self.network
        if window is not None:
            base = network.attend(q, *window)
        taste = network.taste(base, user_index)
        taste = taste * (~drop_taste).unsqueeze(-1).to(taste.dtype)
        p = network(q, taste)
        losses = {}
        if config.bce_weight > 0:
            pos_logits = network.log_logit_scale.exp() * (p * pos).sum(-1) + network.logit_bias
            neg_logits = network.log_logit_scale.exp() * torch.einsum("bd,bkd->bk", p, negatives) + network.logit_bias
            pos_loss = F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits))
            neg_loss = F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits), reduction="none")
            neg_loss = (neg_loss * negative_mask).sum() / negative_mask.sum().clamp(min=1)
            if "in_batch" in config.negatives:
                batch_logits = network.logits(p, pos)
                off_diagonal = (target_ids[:, None] != target_ids[None, :]).to(p.dtype)
                in_batch = F.binary_cross_entropy_with_logits(batch_logits, torch.zeros_like(batch_logits), reduction="none")
                neg_loss = neg_loss + (in_batch * off_diagonal).sum() / off_diagonal.sum().clamp(min=1)
            losses["bce"] = pos_loss + neg_loss
        if config.contrastive_weight > 0:
            logits = (p @ pos.T) / network.temperature()
            same_item = target_ids[:, None] == target_ids[None, :]
            eye = torch.eye(len(p), dtype=torch.bool, device=p.device)
            logits = logits.masked_fill(same_item & ~eye, float("-inf"))  # duplicates are not negatives
            if config.contrastive_sampled_negatives and negatives.shape[1] > 0:
                extra = torch.einsum("bd,bkd->bk", p, negatives) / network.temperature()
                logits = torch.cat([logits, extra.masked_fill(negative_mask == 0, float("-inf"))], dim=1)
            losses["contrastive"] = F.cross_entropy(logits, torch.arange(len(p), device=p.device))
        known = user_index >= 0
        residual = network.user_residuals(user_index.clamp(min=0))[known]
        losses["residual_l2"] = residual.pow(2).sum(-1).mean() if known.any() else p.sum() * 0
        total = (
            config.bce_weight * losses.get("bce", 0.0)
            + config.contrastive_weight * losses.get("contrastive", 0.0)
            + config.residual_l2 * losses["residual_l2"]
        )
        return total, {k: float(v.detach()) for k, v in losses.items()}


def version_slug(name: str) -> str:
    """The dataset or --name as the start of a version directory's name: letters, digits, '.', '_' and '-'
    only, so a name such as "h&m/fashion" or "../x" cannot put the model outside --out or make the version
    read as a flag; "model" when nothing is left."""
    slug = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9._-]|\.{2,}", "-", name)).strip("-.")
    return slug[:100] or "model"


def export_model(network: PersonalizationNetwork, experiment: Experiment, config: TrainConfig, name: str,
                 metrics: dict | None = None) -> PersonalizationModel:
    """Fold the residual table into per-user taste vectors and wrap the network as a model."""
    network = copy.deepcopy(network).cpu().eval()
    with torch.inference_mode():
        tastes = network.taste(
            torch.from_numpy(experiment.history_means), torch.arange(len(experiment.split.user_ids))
        ).numpy()
    learned = network.user_residuals.weight.requires_grad
    residuals = network.user_residuals.weight.detach().numpy().copy() if learned else None
    # Every model carries the histories, a model without a taste too: the ranker leaves a known user's history
    # items out of their results by their ids (the taste reads the vectors).
    histories = UserHistories.from_sequences(
        experiment.split.history, experiment.item_vectors, experiment.dataset.items["item_id"].astype(str).tolist()
    )
    created = datetime.now(timezone.utc)
    manifest = {
        "name": name,
        "version": f"{version_slug(name)}-{created.strftime('%Y%m%dT%H%M%S%fZ')}",
        "created": created.isoformat(),
        "encoder": experiment.encoder_name,
        "dimension": experiment.dimension,
        "dataset": experiment.dataset.name,
        "data_hash": experiment.dataset.data_hash,
        "n_users": len(experiment.split.user_ids),
        "metrics": metrics or {},
        "config": {
            "network": config.network_kwargs(),
            "train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "split": {"min_interactions": experiment.split.min_interactions, "request_seed": experiment.request_seed},
        },
    }
    return PersonalizationModel(network, list(experiment.split.user_ids), tastes, manifest, histories=histories, user_residuals=residuals)


def candidate_configs(config: TrainConfig) -> dict[str, TrainConfig]:
    """The concrete configs an "auto" setting stands for (taste x loss mix x user table), by label."""
    # "none" competes too: a taste that does not beat the request alone on validation is not shipped.
    tastes = (TASTE_MEAN, TASTE_ATTENTION, TASTE_NONE) if config.taste == "auto" else (config.taste,)
    tables = ("learned", "off") if config.user_table == "auto" else (config.user_table,)
    losses = {"given": (config.bce_weight, config.contrastive_weight)}
    if config.loss_mix == "auto" and config.bce_weight > 0 and config.contrastive_weight > 0:
        losses = {"composite": losses["given"], "infonce": (0.0, config.contrastive_weight)}
    out = {}
    for taste in tastes:
        for table in (("off",) if taste == TASTE_NONE else tables):
            for loss, (bce, contrastive) in losses.items():
                label = f"taste={taste} loss={loss} user_table={table}"
                out[label] = config.replace(taste=taste, user_table=table, bce_weight=bce, contrastive_weight=contrastive, loss_mix="given")
    return out


def train_model(experiment: Experiment, config: TrainConfig, name: str | None = None, progress: bool = True) -> TrainResult:
    """Train on the train split, early-stopped on validation Recall@10. Settings left "auto" expand to
    candidates (`candidate_configs`): each trains `select_epochs` epochs, the best on validation
    Recall@10 continues to `max_epochs`. Then, unless `sequence` is "off", the SASRec sequence part is
    trained and kept where validation prefers the fusion (always with "on").

    A dataset without validation cases (no user has enough interactions to hold one out, e.g. one
    review per anonymous user) has nothing to choose or stop on: the network trains every epoch and
    keeps the last, "auto" settings take their first candidate, and "auto" ships no sequence part."""
    name = name or experiment.dataset.name
    if not has_validation(experiment):
        log.warning(
            "%s: no validation cases (no user has enough interactions to hold one out): the network trains all %d epochs "
            "and keeps the last; settings left auto take their first candidate; no sequence part unless --sequence on",
            name, config.max_epochs,
        )
    result = _train_network(experiment, config, name, progress)
    model = result.model
    wanted = config.sequence == "on" or (config.sequence == "auto" and has_validation(experiment))
    if model is not None and wanted and not has_sequences(experiment):
        # SASRec would see no pair of items in order: trained on nothing (loss 0), it won a validation case by chance.
        log.log(logging.WARNING if config.sequence == "on" else logging.INFO,
                "%s: no sequence part: no user has two train items in order to learn from", name)
    elif model is not None and wanted:
        sasrec = SASRecConfig(max_epochs=config.sequence_epochs, validation_cases=config.validation_cases, seed=config.seed,
                              device=config.device)
        model.manifest["metrics"]["sequence"] = fit_sequence_part(model, experiment, sasrec, progress, forced=config.sequence == "on")
    return result


def has_sequences(experiment: Experiment) -> bool:
    return any(len(items) >= 2 for items in experiment.split.history)


def has_validation(experiment: Experiment) -> bool:
    return len(experiment.split.validation) > 0


def _train_network(experiment: Experiment, config: TrainConfig, name: str, progress: bool) -> TrainResult:
    candidates = candidate_configs(config)
    if not has_validation(experiment):
        candidates = dict([next(iter(candidates.items()))])
    if len(candidates) == 1:
        run = TrainingRun(experiment, next(iter(candidates.values())), name, progress)
        run.advance(config.max_epochs)
        return run.finish()
    select_epochs = config.select_epochs or config.max_epochs
    best, summary, seconds = None, {}, 0.0
    for label, candidate in candidates.items():
        run = TrainingRun(experiment, candidate, name, progress, label=label)
        run.advance(select_epochs)
        seconds += run.seconds
        summary[label] = {"validation_recall@10": run.best_recall, "epochs": run.epoch, "seconds": round(run.seconds, 1)}
        log.info("%s: candidate %s: validation recall@10 %.4f after %d epochs", name, label, run.best_recall, run.epoch)
        if best is None or _better(run, best):
            best = run  # a losing run is dropped here, so at most two hold their tensors at once
    before = best.seconds
    best.advance(config.max_epochs)
    seconds += best.seconds - before
    result = best.finish()
    if result.model is None:  # not rank 0 of a distributed run
        return result
    log.info("%s: chosen on validation: %s", name, best.label)
    metrics = result.model.manifest["metrics"]
    metrics["selection"] = {"chosen": best.label, "select_epochs": select_epochs, "candidates": summary}
    metrics["train_seconds_all_candidates"] = round(seconds, 1)
    return result


def _better(run: TrainingRun, best: TrainingRun) -> bool:
    """Whether `run` beat `best` on validation: rank 0 decides and tells the other ranks."""
    better = run.best_recall > best.best_recall
    if dist.is_initialized():
        flag = [better]
        dist.broadcast_object_list(flag, src=0)
        better = flag[0]
    return better


@dataclass
class TrainingTensors:
    """The train split on the training device."""

    items: torch.Tensor  # (n_items, d) item vectors
    users: torch.Tensor  # (n_train,) user index of each example
    targets: torch.Tensor  # (n_train,) item index of each example
    queries: torch.Tensor  # (n_train, d) request vectors
    history_sums: torch.Tensor  # (n_users, d) sum of each user's train item vectors
    positives: torch.Tensor  # (n_train, d) the target as validation and test see it
    rows: torch.Tensor  # example rows trained on
    # attention taste only: (n_train, taste_window) the nearest other train items of the user (-1 = none,
    # valid ones first) and their distance in positions from the target
    windows: torch.Tensor | None = None
    window_distances: torch.Tensor | None = None


def training_tensors(experiment: Experiment, config: TrainConfig, device: torch.device) -> TrainingTensors:
    split = experiment.split
    items = torch.from_numpy(experiment.item_vectors).to(device)
    users = torch.as_tensor(split.train["user"].to_numpy(dtype=np.int64, copy=True), device=device)
    targets = torch.as_tensor(split.train["item"].to_numpy(dtype=np.int64, copy=True), device=device)
    queries = torch.from_numpy(np.ascontiguousarray(experiment.train_queries)).to(device)
    sums = torch.zeros(len(split.user_ids), experiment.dimension, device=device).index_add_(0, users, items[targets])
    # Positives as validation and test see them (see Experiment.train_target_vectors).
    leave_one_out = config.positives == "leave_one_out" and experiment.dataset.info.get("item_text_source") == ITEM_TEXT_TRAIN_REQUESTS
    if leave_one_out and experiment.train_target_vectors is None:
        raise ValueError("positives: leave_one_out needs an experiment prepared with leave_one_out_positives=True")
    if leave_one_out:
        positives = torch.from_numpy(np.ascontiguousarray(experiment.train_target_vectors)).to(device)
        rows = torch.from_numpy(np.flatnonzero(experiment.train_mask))
        if not len(rows):
            raise ValueError(
                "positives: leave_one_out leaves no training example (every target's text is made only of its own "
                "training request); train with --positives catalog"
            )
    else:
        positives, rows = items[targets], torch.arange(len(targets))
    windows = distances = None
    if config.taste == TASTE_ATTENTION:
        window_items, window_distance = training_windows(split.train["user"].to_numpy(), split.train["item"].to_numpy(), config.taste_window)
        windows, distances = torch.from_numpy(window_items).to(device), torch.from_numpy(window_distance).to(device)
    return TrainingTensors(items, users, targets, queries, sums, positives, rows, windows, distances)


def training_windows(users: np.ndarray, items: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per train row (rows grouped by user, in time order): the `window` other items of the same user
    nearest to it in the sequence (ties: the earlier first), as (n, window) item indices (-1 = none, valid
    ones first) and (n, window) distances in positions."""
    n = len(users)
    if n and np.any(np.diff(users) < 0):
        raise ValueError("train rows must be grouped by user in time order")
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if n else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, n])
    start_of_row = np.repeat(starts, lengths)
    length_of_row = np.repeat(lengths, lengths)
    position = np.arange(n) - start_of_row
    steps = np.arange(1, window + 1)
    offsets = np.stack([-steps, steps], axis=1).reshape(-1)  # -1, +1, -2, +2, ...: nearest first
    candidate = position[:, None] + offsets[None, :]
    valid = (candidate >= 0) & (candidate < length_of_row[:, None])
    order = np.argsort(~valid, axis=1, kind="stable")[:, :window]
    chosen = np.take_along_axis(candidate, order, axis=1)
    chosen_valid = np.take_along_axis(valid, order, axis=1)
    window_items = np.where(chosen_valid, items[np.clip(start_of_row[:, None] + chosen, 0, max(n - 1, 0))], -1)
    distances = np.abs(offsets)[order].astype(np.float32)
    return window_items.astype(np.int64), distances


class NegativeSampler:
    """Draws `negatives_per_sampler` items per example from each configured sampler (uniform,
    popularity, hard: the request's nearest items in the text tower)."""

    def __init__(self, experiment: Experiment, config: TrainConfig, device: torch.device):
        self._config, self._device = config, device
        self._n_items = len(experiment.item_vectors)
        self._generator: torch.Generator | None = None
        self._pools = self._pool_of_example = None
        if "hard" in config.negatives:
            # One pool per distinct request string: simulated requests repeat a lot.
            codes, _ = pd.factorize(experiment.split.train["request"])
            first = np.unique(codes, return_index=True)[1]
            self._pools = hard_negative_pools(experiment.train_queries[first], experiment.item_vectors, config.hard_pool, device)
            self._pool_of_example = torch.from_numpy(codes.astype(np.int64)).to(device)
        self._popularity = None
        if "popularity" in config.negatives:
            weights = torch.from_numpy(experiment.split.item_counts.astype(np.float64)).clamp(min=0) ** config.popularity_power
            self._popularity = (weights / weights.sum()).float().to(device)

    def use_generator(self, generator: torch.Generator) -> None:
        self._generator = generator

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        k, b, generator, device = self._config.negatives_per_sampler, len(batch), self._generator, self._device
        drawn = []
        if "uniform" in self._config.negatives:
            drawn.append(torch.randint(self._n_items, (b, k), generator=generator).to(device))
        if self._popularity is not None:
            drawn.append(torch.multinomial(self._popularity.cpu(), b * k, replacement=True, generator=generator).view(b, k).to(device))
        if self._pools is not None:
            column = torch.randint(self._pools.shape[1], (b, k), generator=generator).to(device)
            drawn.append(self._pools[self._pool_of_example[batch]].gather(1, column))
        return torch.cat(drawn, dim=1) if drawn else torch.zeros(b, 0, dtype=torch.long, device=device)


def calibrated_logit_bias(experiment: Experiment, logit_scale: float, seed: int, pairs: int = 20000) -> float:
    """-logit_scale * mean cos(training request, random catalog item): a random pair's starting logit is 0."""
    rng = np.random.default_rng(seed)
    queries = experiment.train_queries[rng.integers(0, len(experiment.train_queries), pairs)]
    items = experiment.item_vectors[rng.integers(0, len(experiment.item_vectors), pairs)]
    return -logit_scale * float(np.einsum("nd,nd->n", queries, items).mean())


def build_network(
    dim: int, n_users: int, config: TrainConfig, device: torch.device, distributed: bool
) -> tuple[PersonalizationNetwork, nn.Module, list[torch.optim.Optimizer]]:
    """The network, the loss module that runs it (DDP-wrapped when distributed) and its optimizers."""
    # Sparse table gradients make a step's cost independent of the number of users; DDP's
    # all-reduce wants dense ones.
    network = PersonalizationNetwork(dim, n_users, sparse_users=not distributed, **config.network_kwargs()).to(device)
    learn_table = config.user_table != "off" and config.user_lr > 0
    if not learn_table:  # taste = history mean only; frozen before DDP registers its parameters
        network.user_residuals.weight.requires_grad_(False)
    step: nn.Module = TrainingStep(network, config)
    if distributed:
        unused = config.bce_weight == 0 or config.contrastive_weight == 0
        step = nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused
        )
    other_params = [p for n, p in network.named_parameters() if n != "user_residuals.weight"]
    optimizers = [torch.optim.AdamW(other_params, lr=config.lr, weight_decay=config.weight_decay)]
    if learn_table:
        table_optimizer = torch.optim.Adam if distributed else torch.optim.SparseAdam
        optimizers.append(table_optimizer([network.user_residuals.weight], lr=config.user_lr))
    return network, step, optimizers


def run_epoch(
    step: nn.Module, optimizers: list[torch.optim.Optimizer], data: TrainingTensors, sample_negatives: NegativeSampler,
    order: torch.Tensor, config: TrainConfig, generator: torch.Generator, bar_label: str, show_bar: bool,
) -> dict[str, float]:
    """One pass over `order` (this rank's examples); returns the mean of each loss part."""
    device = data.items.device
    step.train()
    n_batches = math.ceil(len(order) / config.batch_size)
    totals: dict[str, float] = {}
    bar = tqdm(range(n_batches), desc=bar_label, unit="batch", disable=bar_disabled(show_bar), leave=False)
    for b in bar:
        batch = order[b * config.batch_size : (b + 1) * config.batch_size]
        u, i = data.users[batch], data.targets[batch]
        base = data.history_sums[u] - data.items[i]  # leave-one-out: the target is not part of its own taste
        window = None
        if data.windows is not None:
            items_of_window = data.windows[batch]
            mask = items_of_window >= 0
            width = max(int(mask.sum(1).max()), 1)  # valid items come first: trim the padding
            mask, items_of_window = mask[:, :width], items_of_window[:, :width]
            window = (data.items[items_of_window.clamp(min=0)], data.window_distances[batch][:, :width], mask)
        draw = torch.rand(len(batch), 2, generator=generator).to(device)
        user_index = torch.where(draw[:, 0] < config.user_dropout, torch.full_like(u, -1), u)
        drop_taste = draw[:, 1] < config.no_user_rate
        if config.taste == TASTE_NONE:
            drop_taste = torch.ones_like(drop_taste)
        negatives = sample_negatives(batch)
        negative_mask = (negatives != i[:, None]).float()
        loss, parts = step(
            data.queries[batch], base, window, user_index, drop_taste, data.positives[batch], data.items[negatives], negative_mask, i
        )
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        parts["loss"] = float(loss.detach())
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value
        if b % 20 == 0:
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
    bar.close()
    return {key: value / n_batches for key, value in totals.items()}


class EarlyStopping:
    """Keeps the network state of the best validation Recall@10 and says when `patience` epochs passed without one."""

    def __init__(self, patience: int):
        self.patience = patience
        self.recall, self.epoch, self.state, self.metrics = -1.0, 0, None, {}

    def update(self, epoch: int, metrics: dict | None, network: nn.Module) -> bool:
        """Records this epoch's validation (None: there is none, so the latest epoch is kept); True when training should stop."""
        if metrics is None:
            self.epoch, self.state = epoch, copy.deepcopy(network.state_dict())
            return False
        if metrics["recall@10"] > self.recall:
            self.recall, self.epoch, self.metrics = metrics["recall@10"], epoch, metrics
            self.state = copy.deepcopy(network.state_dict())
        return epoch - self.epoch >= self.patience


def _validate_epoch(network, experiment, config, name, epoch, row, started, progress) -> dict:
    model = export_model(network, experiment, config, name)
    metrics = validation_metrics(WhisperLite(model, experiment), experiment, limit=config.validation_cases)
    row.update({f"val_{k}": v for k, v in metrics.items()})
    row["temperature"] = float(network.temperature().detach())
    row["seconds"] = round(time.perf_counter() - started, 2)
    if progress and sys.stderr.isatty():  # over the epoch's bar, which a log line would break
        tqdm.write(f"{name} epoch {epoch}: loss {row['train_loss']:.4f}  val recall@10 {metrics['recall@10']:.4f}  ndcg@10 {metrics['ndcg@10']:.4f}")
    else:  # once in a log file (it was written twice there)
        log.info(
            "%s epoch %d: loss %.4f, validation recall@10 %.4f ndcg@10 %.4f",
            name, epoch, row["train_loss"], metrics["recall@10"], metrics["ndcg@10"],
        )
    return metrics


class TrainingRun:
    """One training run of one concrete config: epochs over the train split until validation stalls,
    resumable, so a candidate of an "auto" setting can train a few epochs and later go on."""

    def __init__(self, experiment: Experiment, config: TrainConfig, name: str, progress: bool, label: str = ""):
        self._started = time.perf_counter()
        self.seconds = 0.0
        seed_everything(config.seed)
        self.experiment, self.config, self.name, self.progress, self.label = experiment, config, name, progress, label
        self.distributed = dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        device = torch_device(config.device, self.rank)
        self.data = training_tensors(experiment, config, device)
        self.sample_negatives = NegativeSampler(experiment, config, device)
        self.network, self.step, self.optimizers = build_network(
            experiment.dimension, len(experiment.split.user_ids), config, device, self.distributed
        )
        if config.bias_init == "calibrated":
            with torch.no_grad():
                self.network.logit_bias.fill_(calibrated_logit_bias(experiment, config.logit_scale, config.seed))
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed + self.rank)
        self.sample_negatives.use_generator(self.generator)
        self.history: list[dict] = []
        self.early_stopping = EarlyStopping(config.patience)
        self.epoch, self.stopped = 0, False
        self._pause()

    @property
    def best_recall(self) -> float:
        return self.early_stopping.recall

    def _pause(self) -> None:
        now = time.perf_counter()
        self.seconds += now - self._started
        self._started = now

    def advance(self, until_epoch: int) -> None:
        """Train until `until_epoch` epochs are done or early stopping says stop."""
        self._started = time.perf_counter()
        config, data = self.config, self.data
        bar_label = f"{self.label} epoch" if self.label else "epoch"
        while self.epoch < min(until_epoch, config.max_epochs) and not self.stopped:
            self.epoch += 1
            epoch = self.epoch
            permutation = data.rows[torch.randperm(len(data.rows), generator=self.generator)].to(data.items.device)
            if self.distributed:  # every rank shards rank 0's permutation, so the shards partition the epoch
                dist.broadcast(permutation, src=0)
            order = epoch_shard(permutation, self.rank, self.world)
            losses = run_epoch(self.step, self.optimizers, data, self.sample_negatives, order, config, self.generator,
                               f"{bar_label} {epoch}", self.progress and self.rank == 0)
            row = {"epoch": epoch, **{f"train_{k}": v for k, v in losses.items()}}
            stop = False
            if self.rank == 0:
                metrics = None
                if has_validation(self.experiment):
                    metrics = _validate_epoch(self.network, self.experiment, config, self.name, epoch, row,
                                              self._started - self.seconds, self.progress)
                else:
                    log.info("%s epoch %d: loss %.4f (no validation cases)", self.name, epoch, row["train_loss"])
                stop = self.early_stopping.update(epoch, metrics, self.network)
            self.history.append(row)
            if self.distributed:
                flag = [stop]
                dist.broadcast_object_list(flag, src=0)
                stop = flag[0]
            self.stopped = stop
        self._pause()

    def finish(self) -> TrainResult:
        """The best epoch's network as a model (None on ranks other than 0)."""
        early_stopping = self.early_stopping
        if self.rank != 0 or early_stopping.state is None:
            return TrainResult(model=None, history=self.history, seconds=self.seconds)
        self.network.load_state_dict(early_stopping.state)
        metrics = {
            "validation": early_stopping.metrics, "best_epoch": early_stopping.epoch, "epochs": len(self.history),
            "train_seconds": round(self.seconds, 1),
        }
        model = export_model(self.network, self.experiment, self.config, self.name, metrics=metrics)
        return TrainResult(model=model, history=self.history, best_epoch=early_stopping.epoch, seconds=self.seconds)


def save_model_dir(result: TrainResult, out_root: str | Path) -> Path:
    """Write models/<name>-<UTC timestamp>/ with the manifest, weights, user tastes and curves."""
    from whisperlite.trainer.plots import plot_training_curves

    directory = Path(out_root) / result.model.version
    result.model.manifest["history"] = result.history
    result.model.save(directory)
    plot_training_curves(result.history, directory / "curves.png", title=result.model.version)
    return directory


def epoch_shard(permutation: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of an epoch's shuffled examples: disjoint across ranks and equal in size, so every
    rank runs as many batches as the others (DDP pairs their gradient reductions); drops under `world` examples."""
    per_rank = len(permutation) // world
    return permutation[rank * per_rank : (rank + 1) * per_rank]


def init_distributed() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); False when running alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
    return True
