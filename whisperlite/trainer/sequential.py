"""`sasrec`: a sequential, history-only recommender (SASRec, Kang & McAuley 2018), no text at all.

Causal self-attention over each user's item sequence predicts the next item; trained on the train
split (full softmax over the catalog), early-stopped on validation Recall@10, and scoring the full
catalog from the last position's output. Every method sees the same user evidence: the train items.
The network and its sequence conventions live in core/sequence.py, where a served model uses them.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from whisperlite.core.devices import torch_device
from whisperlite.core.progress import bar_disabled
from whisperlite.core.personalization import PersonalizationModel
from whisperlite.core.sequence import (
    CANDIDATE_COUNTS, CANDIDATE_RECALL, TEXT_WEIGHTS, SASRecNetwork, SequenceArchitecture, SequenceModel, left_padded,
)
from whisperlite.trainer.experiment import Experiment
from whisperlite.trainer.methods import WhisperLite, rank_variants, validation_metrics
from whisperlite.trainer.metrics import summarize

log = logging.getLogger(__name__)

# Largest positions x items block of logits made at once in training (floats): 256 MB.
LOGITS_PER_CHUNK = 64 * 1024 * 1024
# The fused score ships only when it wins more validation cases than it loses beyond chance (one-sided sign test over
# the cases where one of the two finds the target in its top 10): on 150 users of three interactions, an untrained
# part (no user had two train items) won by one case, was shipped, and reordered every served answer at random.
SHIP_SIGNIFICANCE = 0.05


@dataclass
class SASRecConfig(SequenceArchitecture):
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 40
    patience: int = 3
    validation_cases: int = 10000
    seed: int = 0
    device: str = "auto"


def training_chunks(history: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of shape (n, length): every train sequence cut from its end into chunks of
    length + 1 items (overlapping by one), so long histories train on all their items."""
    inputs, targets = [], []
    for items in history:
        end = len(items)
        while end >= 2:
            chunk = items[max(0, end - length - 1) : end]
            inputs.append(chunk[:-1])
            targets.append(chunk[1:])
            end -= length
    if not inputs:
        return np.zeros((0, length), np.int64), np.zeros((0, length), np.int64)
    return left_padded(inputs, length), left_padded(targets, length)


class SASRec:
    """The `sasrec` method of `whisperlite evaluate`."""

    name = "sasrec"

    def __init__(self, experiment: Experiment, config: SASRecConfig | None = None, progress: bool = False):
        self.config = config = config or SASRecConfig()
        started = time.perf_counter()
        torch.manual_seed(config.seed)
        self._device = torch_device(config.device)
        self._history = experiment.split.history
        self.network = SASRecNetwork(experiment.dataset.n_items, config.architecture()).to(self._device)
        inputs, targets = training_chunks(self._history, config.max_length)
        self.history_rows: list[dict] = []
        optimizer = torch.optim.Adam(self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(config.seed)
        best = (-1.0, 0, None, {})
        validating = len(experiment.split.validation) > 0
        for epoch in range(1, config.max_epochs + 1):
            loss = self._epoch(inputs, targets, optimizer, generator, f"sasrec epoch {epoch}", progress)
            metrics = validation_metrics(self, experiment, config.validation_cases)
            self.history_rows.append({"epoch": epoch, "train_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}})
            if validating:
                log.info("sasrec epoch %d: loss %.4f, validation recall@10 %.4f", epoch, loss, metrics["recall@10"])
            else:  # it read "validation recall@10 0.0000", a score of nothing
                log.info("sasrec epoch %d: loss %.4f (no validation cases: the last epoch is kept)", epoch, loss)
            if metrics["recall@10"] > best[0] or not validating:  # nothing to choose on: the last
                best = (metrics["recall@10"], epoch, copy.deepcopy(self.network.state_dict()), metrics)
            if epoch - best[1] >= config.patience:
                break
        if best[2] is not None:
            self.network.load_state_dict(best[2])
        self.network.eval()
        self.best_epoch, self.validation = best[1], best[3]
        self.seconds = time.perf_counter() - started

    def _epoch(self, inputs, targets, optimizer, generator, label: str, progress: bool) -> float:
        self.network.train()
        order = torch.randperm(len(inputs), generator=generator).numpy()
        batches = range(0, len(order), self.config.batch_size)
        total, count = 0.0, 0
        for start in tqdm(batches, desc=label, unit="batch", disable=bar_disabled(progress), leave=False):
            rows = order[start : start + self.config.batch_size]
            x, y = torch.from_numpy(inputs[rows]).to(self._device), torch.from_numpy(targets[rows]).to(self._device)
            valid = y > 0
            width = int(valid.any(0).nonzero().min()) if valid.any() else 0  # left padding common to the batch
            x, y, valid = x[:, width:], y[:, width:], valid[:, width:]
            hidden = self.network(x)[valid]
            optimizer.zero_grad(set_to_none=True)
            loss = self._full_softmax_loss(hidden, y[valid] - 1)
            optimizer.step()
            total += float(loss.detach()) * int(valid.sum())
            count += int(valid.sum())
        return total / max(count, 1)

    def _full_softmax_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross entropy over the whole catalog, back-propagated. The logits of a batch are positions x items: at
        105k articles (H&M's catalog) a batch's would be 2.7 GB before their gradient, so past LOGITS_PER_CHUNK
        they are made and back-propagated a slice of positions at a time (the same gradient, summed)."""
        rows_per_chunk = max(1, LOGITS_PER_CHUNK // self.network.n_items)
        if len(hidden) <= rows_per_chunk:
            loss = F.cross_entropy(self.network.catalog_logits(hidden), targets)
            loss.backward()
            return loss.detach()
        states = hidden.detach().requires_grad_()
        total = torch.zeros((), device=hidden.device)
        for start in range(0, len(states), rows_per_chunk):
            part = slice(start, start + rows_per_chunk)
            loss = F.cross_entropy(self.network.catalog_logits(states[part]), targets[part], reduction="sum") / len(states)
            loss.backward()  # the item table's gradient, and this slice's of `states`
            total += loss.detach()
        hidden.backward(states.grad)  # through the transformer once
        return total

    def scores(self, users, queries):
        was_training = self.network.training
        self.network.eval()
        sequences = left_padded([self._history[u] for u in users], self.config.max_length)
        with torch.inference_mode():
            scores = self.network.catalog_logits(self.network.last_states(sequences)).float().cpu().numpy()
        self.network.train(was_training)
        return scores

    def details(self) -> dict:
        return {
            "config": asdict(self.config), "best_epoch": self.best_epoch, "epochs": len(self.history_rows),
            "train_seconds": round(self.seconds, 1), "validation": self.validation, "history": self.history_rows,
        }


def fit_sequence_part(model: PersonalizationModel, experiment: Experiment, config: SASRecConfig, progress: bool = False,
                      forced: bool = False) -> dict:
    """Trains SASRec on the train split and chooses the fusion's text weight on validation Recall@10
    (ties: the larger weight); the model keeps the sequence part unless 1.0 (the model alone) wins.
    `forced` leaves 1.0 out: the part is always shipped. Returns the record for the manifest."""
    started = time.perf_counter()
    sasrec = SASRec(experiment, config, progress=progress)
    sequence = SequenceModel.from_training(
        sasrec.network, config.architecture(), experiment.dataset.items["item_id"].tolist(), experiment.split.history,
        1.0, experiment.item_vectors,
    )
    model.sequence = sequence
    scorer = WhisperLite(model, experiment)
    weights = [w for w in TEXT_WEIGHTS if not (forced and w == 1.0)]
    per_case = rank_variants(lambda users, queries: scorer.scores_at_text_weights(users, queries, weights), weights,
                             "sequence text weight", experiment, "validation", limit=config.validation_cases)
    selection = [{"text_weight": weight, "validation": summarize(per_case[weight])} for weight in weights]
    best = max(reversed(selection), key=lambda s: s["validation"]["recall@10"])
    sign_test = None
    if not forced and best["text_weight"] != 1.0:
        sign_test = _sign_test(per_case[best["text_weight"]]["recall@10"], per_case[1.0]["recall@10"])
        if sign_test["p"] >= SHIP_SIGNIFICANCE:
            log.info("sequence part: text weight %.1f won %d validation cases and lost %d: within chance (sign test p %.3f), "
                     "not shipped", best["text_weight"], sign_test["gained"], sign_test["lost"], sign_test["p"])
            best = next(s for s in selection if s["text_weight"] == 1.0)
    sequence.text_weight = best["text_weight"]
    recall = {}
    if best["text_weight"] == 1.0:
        model.sequence = None
    else:
        recall = candidate_recall(scorer, experiment, min(config.validation_cases or 2000, 2000))
        sequence.candidates = next((n for n in recall if recall[n] >= CANDIDATE_RECALL), CANDIDATE_COUNTS[-1])
    chosen = "chosen on validation" if len(experiment.split.validation) else "the largest allowed (no validation cases to choose on)"
    log.info("sequence part: text weight %.1f, %s (%s)", best["text_weight"], chosen,
             "not shipped" if model.sequence is None else f"shipped, {sequence.candidates} candidates")
    return {
        "shipped": model.sequence is not None, "text_weight": best["text_weight"], "selection": selection, "sign_test": sign_test,
        "candidates": sequence.candidates if model.sequence is not None else None, "candidate_recall": recall,
        "sasrec": sasrec.details(), "seconds": round(time.perf_counter() - started, 1),
    }


def _sign_test(fused: np.ndarray, alone: np.ndarray) -> dict:
    """Validation cases the fused score found in its top 10 and the network alone did not (gained), the reverse (lost),
    and the one-sided sign test's p of a gain that large by chance."""
    from scipy.stats import binomtest

    gained, lost = int(np.sum(fused > alone)), int(np.sum(fused < alone))
    p = binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "p": round(float(p), 4)}


def candidate_recall(scorer: WhisperLite, experiment: Experiment, cases: int, top: int = 10, batch: int = 128) -> dict[int, float]:
    """{N: share of the fused top `top` items among the cosine's top N}, over `cases` seeded validation cases:
    the ranker searches the catalog by cosine with the personalized query, then fuses, so its candidate
    count must reach this deep. Seen items count too, as the ranker does not exclude them. Empty where there is no
    case to measure on (no validation split): unmeasured, which a recall of 0 would misstate."""
    frame = experiment.split.validation
    rows = np.sort(np.random.default_rng(0).choice(len(frame), size=min(cases, len(frame)), replace=False))
    if not len(rows):
        return {}
    users, queries = frame["user"].to_numpy()[rows], experiment.validation_queries[rows]
    found = dict.fromkeys(CANDIDATE_COUNTS, 0)
    top = min(top, experiment.dataset.n_items)  # a catalog under `top` items has that many to find
    for start in range(0, len(rows), batch):
        cosines, scores = scorer.cosines_and_scores(users[start : start + batch], queries[start : start + batch])
        best = np.argsort(-scores, axis=1)[:, :top]
        depth = (cosines[:, None, :] > np.take_along_axis(cosines, best, axis=1)[:, :, None]).sum(axis=2)  # cosine rank, 0 = first
        for n in CANDIDATE_COUNTS:
            found[n] += int((depth < n).sum())
    return {n: found[n] / (len(rows) * top) for n in CANDIDATE_COUNTS}
