"""RankerService: translates protos to the Recommender use case and back."""

import logging

from whisperlite.core.request_context import current_request_id
from whisperlite.services.ranker.recommender import Recommender
from whisperlite.v1 import ranker_pb2, ranker_pb2_grpc

log = logging.getLogger("whisperlite.ranker")

_PATHS = {
    "user_embedding": ranker_pb2.PERSONALIZATION_PATH_USER_EMBEDDING,
    "recent_items": ranker_pb2.PERSONALIZATION_PATH_RECENT_ITEMS,
    "text_only": ranker_pb2.PERSONALIZATION_PATH_TEXT_ONLY,
}


class RankerServicer(ranker_pb2_grpc.RankerServiceServicer):
    def __init__(self, recommender: Recommender):
        self._recommender = recommender

    async def Recommend(self, request: ranker_pb2.RecommendRequest, context) -> ranker_pb2.RecommendResponse:
        # The interceptor bound the caller's x-request-id (or minted one); echoed so callers can quote it.
        request_id = current_request_id()
        result = await self._recommender.recommend(
            user_id=request.user_id,
            query=request.query,
            top_k=request.top_k,
            item_filter=request.filter,
            recent_item_ids=list(request.recent_item_ids),
            include_history_items=request.include_history_items,
            time_remaining=context.time_remaining(),
        )
        log.info(
            "recommend",
            extra={"user_id": request.user_id, "path": result.path, "n_items": len(result.items)},
        )
        return ranker_pb2.RecommendResponse(
            items=[
                ranker_pb2.RecommendedItem(
                    item=scored.item,
                    score=scored.score,
                    query_match=scored.query_match,
                    personal_affinity=scored.personal_affinity,
                )
                for scored in result.items
            ],
            model_version=result.model_version,
            request_id=request_id,
            path=_PATHS[result.path],
            missing_recent_item_ids=result.missing_recent_item_ids,
        )
