"""The Recommend use case: encode the request, personalize it, fetch candidates, re-score them."""

import asyncio
import contextvars
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import numpy as np

from whisperlite.core.clients.catalog import Candidate, CandidateSearch, CatalogClient
from whisperlite.core.clients.query_encoder import QueryEncoderClient
from whisperlite.core.item_fields import MAX_ID_CHARS, has_control_characters, item_id_problem
from whisperlite.core.text import has_visible_characters
from whisperlite.core.errors import (
    DeadlineExceeded, DownstreamBusy, FailedPrecondition, InvalidArgument, Overloaded, ServiceError, Unavailable,
)
from whisperlite.core.request_context import bind_deadline
from whisperlite.core.personalization import TASTE_NONE, PersonalizationModel, PersonalizedQuery, text_plus_history_query
from whisperlite.services.ranker.metrics import (
    MODEL_REQUESTS,
    MODEL_SECONDS,
    RECOMMENDATIONS,
    SHADOW_OUTCOMES,
    SHADOW_OVERLAP,
    SHADOW_SECONDS,
    STAGE_SECONDS,
)
from whisperlite.services.ranker.batching import Coalescer
from whisperlite.services.ranker.models import ModelRegistry
from whisperlite.services.common.outages import Outages
from whisperlite.services.ranker.dependency_watch import CATALOG, QUERY_ENCODER
from whisperlite.services.ranker.query_cache import QueryVectorCache
from whisperlite.v1 import common_pb2

log = logging.getLogger("whisperlite.ranker")

# The catalog names a refused filter within its SearchBatch ("searches[3].filter.min_price: ..."); the ranker's caller
# sent one filter, "filter.min_price".
_SEARCH_FIELD = re.compile(r"^searches\[\d+\]\.")
NO_MODEL = "none"  # the metrics' version label while no trained model serves (text-only)
ENCODER_STILL_SERVED = "query texts in the ranker's cache are still answered"


def overlap_at_k(live_ids: list[str], candidate_ids: list[str]) -> float:
    """Share of the live answer's items that the candidate also returned (1.0 when both are empty)."""
    if not live_ids:
        return 1.0 if not candidate_ids else 0.0
    return len(set(live_ids) & set(candidate_ids)) / len(live_ids)


@dataclass(frozen=True)
class RankerLimits:
    max_top_k: int = 100
    max_query_chars: int = 1000
    max_recent_items: int = 50
    # Candidates the catalog searches for and re-scored. The network's score is monotone in the cosine
    # the catalog searches by, so only the top_k best come with their item and explain scores (the others
    # with their cosine alone) and a margin over top_k only absorbs ANN misses.
    # A model's sequence part reorders candidates (its fused score is not the cosine's order): the model says
    # how many to search (measured on validation in training); the best `candidates` of them come in full.
    candidates: int = 50
    # Concurrent Recommends share downstream calls (services/ranker/batching.py): at most this many
    # texts per Embed and searches per SearchBatch, and this many of each call out at once.
    max_batch: int = 64
    concurrent_batches: int = 2

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"{name}: must be at least 1, got {value}")


@dataclass(frozen=True)
class ScoredItem:
    item: common_pb2.Item
    score: float
    query_match: float
    personal_affinity: float


# The retry hint of a call refused because a dependency was busy and gave none of its own: about one batch's wait.
BUSY_RETRY_AFTER_MS = 1000


@dataclass(frozen=True)
class Recommendations:
    items: list[ScoredItem]
    path: str
    model_version: str
    missing_recent_item_ids: tuple[str, ...] = ()  # recent ids the catalog does not hold: the taste left them out


@dataclass(frozen=True)
class ShadowCall:
    """A request already answered by the live version, to be answered again by the shadow candidate."""

    candidate: PersonalizationModel
    live_version: str
    live_ids: list[str]
    query_vector: np.ndarray
    user_id: str
    recent_item_ids: list[str]
    recent_vectors: np.ndarray | None
    item_filter: common_pb2.ItemFilter
    top_k: int
    include_history_items: bool


@contextmanager
def _stage(name: str, current: list[str]):
    current[0] = name  # what a deadline that passes now interrupted
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - start)


def _answer_within(time_remaining: float | None) -> float | None:
    """How long the ranker may work on a call: a little less than the caller waits, so that the caller
    hears which stage ran out of time rather than its own bare DEADLINE_EXCEEDED."""
    if time_remaining is None:
        return None
    return max(time_remaining - 0.02, 0.9 * time_remaining)


def _left_out(model: PersonalizationModel | None, user_id: str, include_history_items: bool) -> frozenset[str]:
    """The items kept out of the answer: a known user's stored history, unless the caller asked for it."""
    if model is None or include_history_items:
        return frozenset()
    return model.history_item_ids(user_id or None)


def _detailed(candidate: Candidate) -> bool:
    """Whether the catalog sent what explaining the item takes: its vector or its explain scores."""
    return candidate.vector is not None or candidate.explain_scores is not None


def _explanation(candidate: Candidate, query_vector: np.ndarray, taste: np.ndarray | None) -> dict[str, float]:
    """query_match (the item with the request) and personal_affinity (with the taste; 0 without one)."""
    if candidate.explain_scores is not None:  # the catalog's products with (query, taste), in that order
        products = candidate.explain_scores
        return {"query_match": float(products[0]), "personal_affinity": float(products[1]) if taste is not None else 0.0}
    vector = candidate.vector
    return {"query_match": float(vector @ query_vector), "personal_affinity": float(vector @ taste) if taste is not None else 0.0}


class Recommender:
    def __init__(
        self,
        encoder: QueryEncoderClient,
        catalog: CatalogClient,
        models: ModelRegistry,
        limits: RankerLimits = RankerLimits(),
        max_shadow_in_flight: int = 16,
        query_cache_size: int = 10_000,
        outages: Outages | None = None,
    ):
        self._encoder = encoder
        self._outages = outages or Outages("ranker")
        self._catalog = catalog
        self._models = models
        self._limits = limits
        # Shadow scorings run after the answer is sent; the cap keeps a slow candidate from piling them up.
        self._max_shadow_in_flight = max_shadow_in_flight
        self._shadow_tasks: set[asyncio.Task] = set()
        self._query_vectors = QueryVectorCache(query_cache_size)
        self._embeds = Coalescer(
            self._embed_batch, max_batch=limits.max_batch, max_concurrent=limits.concurrent_batches,
            wait_seconds=encoder.timeout_seconds, name=f"{encoder.service}: Embed",
        )
        self._searches = Coalescer(
            self._search_batch, max_batch=limits.max_batch, max_concurrent=limits.concurrent_batches,
            wait_seconds=catalog.timeout_seconds, name=f"{catalog.service}: SearchBatch",
        )
        self._waits_on = {
            "start": "nothing yet (the call came with next to no time left)",
            "encode": f"{encoder.service} (Embed)",
            "personalize": f"the personalization network, or {catalog.service} (the recent items' vectors)",
            "search": f"{catalog.service} (SearchBatch)",
            "score": f"{catalog.service} (GetItems of items past the detailed hits, or in place of the user's history items)",
        }
        # The network costs ~1 ms of CPU per request alone and about as much for a whole batch: Recommends
        # whose Embed came back together are personalized together (one batch at a time: it is CPU work).
        self._personalizations = Coalescer(self._personalize_batch, max_batch=limits.max_batch, max_concurrent=1)
        # Calls waiting on a dependency when its outage begins fail then, not at their deadline.
        self._outages.on_outage(QUERY_ENCODER, lambda: self._embeds.fail_all(self._outages.refusal(QUERY_ENCODER, ENCODER_STILL_SERVED)))
        self._outages.on_outage(CATALOG, lambda: self._searches.fail_all(self._outages.refusal(CATALOG)))

    def validate(self, user_id: str, query: str, top_k: int, recent_item_ids: list[str]) -> str:
        """Checks the ranker's own fields before any downstream call; returns the query as it will be embedded.

        The filter is the catalog's to judge (it owns the item fields); its INVALID_ARGUMENT reaches the caller as is.
        """
        limits = self._limits
        text = query.strip()
        if not has_visible_characters(text):  # NUL or zero-width spaces would rank by the empty text's vector
            raise InvalidArgument("query: must contain a visible character, not only whitespace, control or format characters")
        if len(text) > limits.max_query_chars:
            raise InvalidArgument(f"query: at most {limits.max_query_chars} characters, got {len(text)}")
        if not 1 <= top_k <= limits.max_top_k:
            raise InvalidArgument(f"top_k: must be between 1 and {limits.max_top_k}, got {top_k}")
        if len(user_id) > MAX_ID_CHARS:
            raise InvalidArgument(f"user_id: at most {MAX_ID_CHARS} characters, got {len(user_id)}")
        if has_control_characters(user_id):  # no user id of a dataset holds one: the user was served as a stranger
            raise InvalidArgument("user_id: must not contain control characters (newline, tab, ...)")
        if user_id and not has_visible_characters(user_id):  # served as a stranger, as a mistyped id is, without a word
            raise InvalidArgument("user_id: must contain a visible character, not only spaces or invisible (format) characters (send none for a shopper without an id)")
        if len(recent_item_ids) > limits.max_recent_items:
            raise InvalidArgument(f"recent_item_ids: at most {limits.max_recent_items} ids, got {len(recent_item_ids)}")
        for index, item_id in enumerate(recent_item_ids):
            # An id no catalog can hold (too long, a control character, nothing visible) was silently ignored.
            if (problem := item_id_problem(item_id)) is not None:
                raise InvalidArgument(f"recent_item_ids[{index}]: {problem}")
        return text

    def fit_query_limit(self, encoder_max_text_chars: int) -> None:
        """Lowers --max-query-chars to what the query encoder embeds (read at start-up), so a long query is refused
        here as `query: ...` rather than by the encoder as `texts[0]: ...`, a field the caller never sent."""
        if self._limits.max_query_chars > encoder_max_text_chars:
            log.warning(
                "--max-query-chars is above what the query encoder embeds: using the encoder's limit",
                extra={"max_query_chars": self._limits.max_query_chars, "encoder_max_text_chars": encoder_max_text_chars},
            )
            self._limits = replace(self._limits, max_query_chars=encoder_max_text_chars)

    async def recommend(
        self,
        *,
        user_id: str,
        query: str,
        top_k: int,
        item_filter: common_pb2.ItemFilter,
        recent_item_ids: list[str],
        include_history_items: bool = False,
        time_remaining: float | None = None,
    ) -> Recommendations:
        """`time_remaining`: the caller's deadline, in seconds from now (None: none). A known user's stored history
        items are left out unless `include_history_items`."""
        current = ["start"]
        try:
            async with asyncio.timeout(_answer_within(time_remaining)) as limit:
                return await self._recommend(user_id, query, top_k, item_filter, recent_item_ids, include_history_items, current)
        except DownstreamBusy as busy:
            # Connected, and slow or shedding: the ranker is overloaded through it. UNAVAILABLE told callers (and the
            # retry policies of gRPC clients) to try again at once, into a dependency that could not keep up.
            raise Overloaded(
                f"overloaded: {busy}; the dependency answers its health checks, so it is busy, not down: retry after the "
                "retry-after-ms trailer's delay or at another replica",
                busy.retry_after_ms or BUSY_RETRY_AFTER_MS,
            ) from None
        except TimeoutError:
            if not limit.expired():
                raise
            raise DeadlineExceeded(
                f"the caller's deadline passed during {current[0]}, waiting on {self._waits_on[current[0]]} "
                f"({time_remaining * 1e3:.0f} ms were left when the call arrived)"
            ) from None

    async def _recommend(
        self, user_id: str, query: str, top_k: int, item_filter: common_pb2.ItemFilter, recent_item_ids: list[str],
        include_history_items: bool, current: list[str],
    ) -> Recommendations:
        traffic = self._models.traffic  # one snapshot per request: a swap in the middle cannot mix two versions
        if traffic is None:
            raise Unavailable("ranker is starting: the personalization model is not loaded yet")
        text = self.validate(user_id, query, top_k, recent_item_ids)
        # Every Recommend searches the catalog: while it is known down, refused before the Embed, which held an
        # admission slot 0.2-2 s under load, so the callers queued behind heard RESOURCE_EXHAUSTED, not the outage.
        self._outages.check(CATALOG)
        started = time.perf_counter()
        route = traffic.route(user_id)
        model = route.model
        with _stage("encode", current):
            query_vector = self._query_vectors.get(text)
            if query_vector is None:
                self._outages.check(QUERY_ENCODER, ENCODER_STILL_SERVED)
                query_vector = await self._embeds.call(text)

        with _stage("personalize", current):
            recent_vectors, missing_recent_ids = await self._recent_vectors(model, user_id, recent_item_ids)
            # A sequence part reads the recent items by id: such a request is personalized on its own.
            session = bool(recent_item_ids) and model is not None and model.sequence is not None
            if model is not None and recent_vectors is None and not session:
                personalized = await self._personalizations.call((model, query_vector, user_id))
            else:
                personalized = self._personalize(model, query_vector, user_id, recent_item_ids, recent_vectors)

        with _stage("search", current):
            candidates = await self._search(model, query_vector, personalized, top_k, item_filter)

        with _stage("score", current):
            items = await self._rank(model, query_vector, personalized, candidates, top_k, _left_out(model, user_id, include_history_items))
        version = model.version if model is not None else ""
        RECOMMENDATIONS.labels(personalized.path).inc()
        MODEL_REQUESTS.labels(version or NO_MODEL).inc()
        MODEL_SECONDS.labels(version or NO_MODEL).observe(time.perf_counter() - started)
        if route.shadow is not None:
            self._start_shadow(ShadowCall(
                candidate=route.shadow, live_version=version, live_ids=[scored.item.item_id for scored in items],
                query_vector=query_vector, user_id=user_id, recent_item_ids=recent_item_ids,
                recent_vectors=recent_vectors, item_filter=item_filter, top_k=top_k, include_history_items=include_history_items,
            ))
        return Recommendations(items=items, path=personalized.path, model_version=version, missing_recent_item_ids=missing_recent_ids)

    async def _recent_vectors(
        self, model: PersonalizationModel | None, user_id: str, recent_item_ids: list[str]
    ) -> tuple[np.ndarray | None, tuple[str, ...]]:
        """The recent items' vectors in request order (most recent last; None when there are none), and the ids the
        catalog lacks, which are left out: the vectors join a known user's stored history and are an unknown user's
        whole taste. A model without a taste reads none (its sequence part reads the ids)."""
        if not recent_item_ids or (model is not None and model.taste_mode == TASTE_NONE):
            return None, ()
        fetched = await self._from_catalog(lambda: self._catalog.vectors(list(recent_item_ids)))
        return (fetched.vectors if len(fetched.vectors) else None), fetched.missing_item_ids

    def _start_shadow(self, call: ShadowCall) -> None:
        if len(self._shadow_tasks) >= self._max_shadow_in_flight:
            SHADOW_OUTCOMES.labels(call.candidate.version, "skipped").inc()
            return
        # Without the caller's deadline (the request id kept): the caller has its answer, and the shadow's calls are
        # bounded by the clients' --deadline-seconds as any background call is.
        context = contextvars.copy_context()
        context.run(bind_deadline, None)
        task = asyncio.create_task(self._shadow(call), context=context)
        self._shadow_tasks.add(task)  # the event loop keeps only weak references to tasks
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, call: ShadowCall) -> None:
        """Answers the same request with the candidate, off the caller's path, and records how it compares."""
        candidate = call.candidate
        started = time.perf_counter()
        try:
            recent_vectors = call.recent_vectors
            if recent_vectors is None:  # the live model reads no user signal; the candidate may
                recent_vectors, _ = await self._recent_vectors(candidate, call.user_id, call.recent_item_ids)
            personalized = self._personalize(candidate, call.query_vector, call.user_id, call.recent_item_ids, recent_vectors)
            found = await self._search(candidate, call.query_vector, personalized, call.top_k, call.item_filter)
            left_out = _left_out(candidate, call.user_id, call.include_history_items)
            ranked = await self._rank(candidate, call.query_vector, personalized, found, call.top_k, left_out)
        except Exception:  # the caller already has the live answer; a failing candidate must only show in metrics
            SHADOW_OUTCOMES.labels(candidate.version, "failed").inc()
            log.exception("shadow scoring failed", extra={"candidate_version": candidate.version})
            return
        SHADOW_SECONDS.labels(candidate.version).observe(time.perf_counter() - started)
        SHADOW_OUTCOMES.labels(candidate.version, "scored").inc()
        shadow_ids = [scored.item.item_id for scored in ranked]
        SHADOW_OVERLAP.labels(call.live_version or NO_MODEL, candidate.version).observe(overlap_at_k(call.live_ids, shadow_ids))

    def _personalize(self, model: PersonalizationModel | None, query_vector: np.ndarray, user_id: str,
                     recent_item_ids: list[str], recent_vectors: np.ndarray | None) -> PersonalizedQuery:
        if model is None:
            return text_plus_history_query(query_vector, recent_vectors)
        return model.personalize(query_vector, user_id or None, recent_vectors, list(recent_item_ids))

    @staticmethod
    async def _personalize_batch(calls: list[tuple[PersonalizationModel, np.ndarray, str]]) -> list[PersonalizedQuery]:
        """(model, query vector, user id) calls -> their personalized queries, one network call per model version."""
        by_model: dict[int, list[int]] = {}
        for index, (model, _, _) in enumerate(calls):
            by_model.setdefault(id(model), []).append(index)
        results: list[PersonalizedQuery | None] = [None] * len(calls)
        for indexes in by_model.values():
            model = calls[indexes[0]][0]
            batch = model.personalize_many(np.stack([calls[i][1] for i in indexes]), [calls[i][2] or None for i in indexes])
            for index, personalized in zip(indexes, batch, strict=True):
                results[index] = personalized
        return results

    async def _complete(self, chosen: list[tuple[int, Candidate]]) -> list[tuple[int, Candidate]]:
        """Fetches the chosen candidates that came without their item (a fused score picked them past the
        detailed hits, or they took the place of the user's history items); one deleted since the search is dropped."""
        missing = [candidate.item.item_id for _, candidate in chosen if not _detailed(candidate)]
        fetched = {item.item_id: item for item in await self._from_catalog(lambda: self._catalog.items(missing))}
        complete = []
        for index, candidate in chosen:
            if not _detailed(candidate):
                item = fetched.get(candidate.item.item_id)
                if item is None:
                    continue
                vector = np.asarray(item.vector, dtype=np.float32)
                item.ClearField("vector")
                candidate = Candidate(item=item, cosine=candidate.cosine, vector=vector)
            complete.append((index, candidate))
        return complete

    async def _embed_batch(self, texts: list[str]) -> np.ndarray:
        embeddings = await self._answer_from(QUERY_ENCODER, self._encoder.embed_texts(texts))
        self._query_vectors.put(embeddings.model_name, texts, embeddings.vectors)
        return embeddings.vectors

    async def _search_batch(self, searches: list[CandidateSearch]) -> list[list[Candidate]]:
        return await self._answer_from(CATALOG, self._catalog.search_batch(searches))

    async def _from_catalog(self, call: Callable[[], Awaitable]):
        self._outages.check(CATALOG)  # before the call is made: a refused one is never awaited
        return await self._answer_from(CATALOG, call())

    async def _answer_from(self, dependency: str, call: Awaitable):
        """`await call`, noting that `dependency` answered, unless it gave no answer (Unavailable: down, refused
        to connect, or silent past the deadline): an answer proves it alive whatever its health checks say."""
        try:
            result = await call
        except Unavailable:
            raise
        except ServiceError:  # an answer about the request (INVALID_ARGUMENT...)
            self._outages.answered(dependency)
            raise
        self._outages.answered(dependency)
        return result

    async def _search(self, model: PersonalizationModel | None, query_vector: np.ndarray, personalized: PersonalizedQuery,
                      top_k: int, item_filter: common_pb2.ItemFilter) -> list[Candidate]:
        wanted, detailed = max(self._limits.candidates, top_k), top_k
        if personalized.sequence_state is not None:
            # The fused top items lie mostly, not only, in the cosine's best: those come in full, the rest by id.
            wanted, detailed = max(model.sequence.candidates, top_k), wanted
        # The explanations of the items shown are all the ranker needs of their vectors: the catalog sends
        # the two dot products instead of 384 floats a hit.
        explain = (query_vector,) if personalized.taste is None else (query_vector, personalized.taste)
        self._outages.check(CATALOG)
        try:
            return await self._searches.call(CandidateSearch(personalized.vector, wanted, item_filter, detailed_hits=detailed, explain=explain))
        except InvalidArgument as error:  # the caller's filter, refused by the catalog: named as the caller sent it
            raise InvalidArgument(_SEARCH_FIELD.sub("", str(error), count=1)) from None

    async def _rank(self, model: PersonalizationModel | None, query_vector, personalized: PersonalizedQuery,
                    candidates: list[Candidate], top_k: int, left_out: frozenset[str] = frozenset()) -> list[ScoredItem]:
        """The top_k candidates by the model's score, items in `left_out` (the user's history) dropped. The search
        is not told of them: a per-user filter would split the batched searches. Fewer than top_k come back when
        they were most of the candidates."""
        kept = [candidate for candidate in candidates if candidate.item.item_id not in left_out]
        dropped = len(kept) < len(candidates)
        candidates = kept
        if not candidates:
            return []
        cosines = np.array([candidate.cosine for candidate in candidates], dtype=np.float32)
        if model is None:
            scores = cosines
        elif personalized.sequence_state is not None:
            rows = model.sequence.item_rows([candidate.item.item_id for candidate in candidates])
            scores = model.rank_scores(personalized.vector[None], cosines[None], personalized.sequence_state[None], rows)[0]
        else:
            scores = model.score_cosines(cosines)
        # Stable sort keeps the catalog's order among equal scores, so responses are deterministic.
        chosen = [(i, candidates[i]) for i in np.argsort(-scores, kind="stable")[:top_k]]
        if not all(_detailed(candidate) for _, candidate in chosen):
            if personalized.sequence_state is None and not dropped:
                # The catalog sends the top_k best by cosine in full; a score monotone in it picks those (unless
                # history items among them were dropped: the next ones by cosine are fetched in their place).
                raise FailedPrecondition("the model's scores do not follow the catalog's cosine order; the ranker cannot serve it")
            chosen = await self._complete(chosen)
        return [
            ScoredItem(item=candidate.item, score=float(scores[i]), **_explanation(candidate, query_vector, personalized.taste))
            for i, candidate in chosen
        ]
