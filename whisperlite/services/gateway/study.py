"""The study's use case: one request answered personalized and non-personal, placed left and right.

The non-personal ranking is the same Recommend with no user and no recent items (the ranker's
text-only path). In blind mode the sides are placed in random order and the page gets only what a judge
needs (each item's rank, id and title, and the judge's own marks), so nothing tells which list is which.
"""

import asyncio
import dataclasses
import random

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from whisperlite.services.gateway.judgements import POSITIONS, JudgementStore, ShownItem, ShownList
from whisperlite.services.gateway.schema import ItemFilter, ProtoInt, RecentItemIds, RecommendRequest, to_proto
from whisperlite.services.gateway.upstream import Metadata, Upstream
from whisperlite.v1 import ranker_pb2


class ComparisonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field("", description="the user to personalize for; empty: no user (both lists text-only unless recent items are given)")
    query: str = ""
    top_k: ProtoInt = 10
    filter: ItemFilter | None = None
    recent_item_ids: RecentItemIds = Field(default_factory=list)


class JudgementRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    position: str = Field(description="the list the item was shown in: left or right")
    rank: ProtoInt = Field(ge=1, le=2**63 - 1, description="its 1-based rank in that list")
    relevant: StrictBool


@dataclasses.dataclass(frozen=True)
class Comparison:
    asked: ComparisonRequest
    personal: ranker_pb2.RecommendRequest


def read_comparison(asked: ComparisonRequest) -> Comparison:
    """The body's Recommend, built while the body is read: a value the proto cannot hold (a top_k past int32) is
    then the body's INVALID_ARGUMENT, like /v1/recommend's."""
    return Comparison(asked, to_proto(RecommendRequest(**asked.model_dump())))


async def compare(upstream: Upstream, store: JudgementStore, comparison: Comparison, blind: bool, metadata: Metadata) -> int:
    request, personal = comparison.asked, comparison.personal
    non_personal = ranker_pb2.RecommendRequest()
    non_personal.CopyFrom(personal)
    non_personal.user_id = ""
    del non_personal.recent_item_ids[:]
    responses = await asyncio.gather(upstream.recommend(personal, metadata), upstream.recommend(non_personal, metadata))
    sides = ["personalized", "non_personal"]
    positions = list(POSITIONS)
    if blind:
        random.shuffle(positions)
    lists = [
        ShownList(
            side=side,
            position=position,
            path=ranker_pb2.PersonalizationPath.Name(response.path),
            model_version=response.model_version,
            request_id=response.request_id,
            items=[ShownItem(s.item.item_id, s.item.title, s.score, s.query_match, s.personal_affinity) for s in response.items],
        )
        for side, position, response in zip(sides, positions, responses)
    ]
    return await asyncio.to_thread(store.add_comparison, request.user_id, request.query, blind, lists)


def comparison_view(store: JudgementStore, comparison_id: int) -> dict:
    """A stored comparison as the page shows it. A blind one carries no field whose value differs by side: no side,
    path or model version, and no score, query match or affinity (the text-only path's scores are on another scale
    than the personalized ones, so its list had every score above every personalized score)."""
    row, lists, judgements = store.comparison(comparison_id)
    blind = bool(row["blind"])
    marks = {(j.position, j.rank): j.relevant for j in judgements}
    views = []
    for shown in sorted(lists, key=lambda s: POSITIONS.index(s.position)):
        items = []
        for rank, item in enumerate(shown.items, 1):
            view = {"rank": rank, "item_id": item.item_id, "title": item.title, "relevant": marks.get((shown.position, rank))}
            if not blind:
                view |= {"score": item.score, "query_match": item.query_match, "personal_affinity": item.personal_affinity}
            items.append(view)
        view = {"position": shown.position, "items": items}
        if not blind:
            view |= {"side": shown.side, "path": shown.path, "model_version": shown.model_version}
        views.append(view)
    return {
        "comparison_id": comparison_id,
        "user_id": row["user_id"],
        "query": row["request"],
        "blind": blind,
        "lists": views,
        "judged": len(judgements),
    }
