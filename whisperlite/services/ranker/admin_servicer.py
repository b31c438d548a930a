"""ModelAdminService: translates protos to the ModelRegistry and back (loading runs in a worker thread)."""

import asyncio

from whisperlite.services.common.interceptors import without_admission
from whisperlite.services.ranker.models import (
    STATE_AVAILABLE,
    STATE_CANDIDATE,
    STATE_LIVE,
    STATE_REFUSED,
    ModelEntry,
    ModelRegistry,
    Traffic,
)
from whisperlite.v1 import model_admin_pb2, model_admin_pb2_grpc

_STATES = {
    STATE_AVAILABLE: model_admin_pb2.MODEL_STATE_AVAILABLE,
    STATE_LIVE: model_admin_pb2.MODEL_STATE_LIVE,
    STATE_CANDIDATE: model_admin_pb2.MODEL_STATE_CANDIDATE,
    STATE_REFUSED: model_admin_pb2.MODEL_STATE_REFUSED,
}


def _version_proto(entry: ModelEntry) -> model_admin_pb2.ModelVersion:
    return model_admin_pb2.ModelVersion(
        version=entry.version, created=entry.created, encoder=entry.encoder, dimension=entry.dimension,
        users=entry.users, state=_STATES[entry.state], error=entry.error, path=str(entry.directory),
    )


def _traffic_proto(traffic: Traffic) -> model_admin_pb2.Traffic:
    return model_admin_pb2.Traffic(
        live_version=traffic.live_version, candidate_version=traffic.candidate_version,
        candidate_percent=traffic.candidate_percent, shadow=traffic.shadow,
    )


class ModelAdminServicer(model_admin_pb2_grpc.ModelAdminServiceServicer):
    """Every call bypasses admission control: rolling back a version that overloads the ranker must not wait behind
    the Recommends it slows (it answers PERMISSION_DENIED without the admin scope all the same)."""

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    @without_admission
    async def ListModels(self, request, context) -> model_admin_pb2.ListModelsResponse:
        entries = await asyncio.to_thread(self._registry.list_models)
        return model_admin_pb2.ListModelsResponse(models=[_version_proto(entry) for entry in entries])

    @without_admission
    async def LoadModel(self, request, context) -> model_admin_pb2.LoadModelResponse:
        model, previous = await asyncio.to_thread(self._registry.load, request.version)
        entries = await asyncio.to_thread(self._registry.list_models)
        # Not a refused copy under the same name: the directory that holds the name is the one loaded.
        entry = next((e for e in entries if e.version == model.version and e.state != STATE_REFUSED), None)
        loaded = _version_proto(entry) if entry else model_admin_pb2.ModelVersion(version=model.version)
        # What this call did: made it live. A concurrent call may have swapped it out since, which the
        # listing would show (GetTraffic says what serves now).
        loaded.state = model_admin_pb2.MODEL_STATE_LIVE
        loaded.error = ""
        return model_admin_pb2.LoadModelResponse(model=loaded, previous_version=previous)

    @without_admission
    async def SetTraffic(self, request, context) -> model_admin_pb2.SetTrafficResponse:
        traffic = await asyncio.to_thread(
            self._registry.set_traffic, request.candidate_version, request.candidate_percent, request.shadow
        )
        return model_admin_pb2.SetTrafficResponse(traffic=_traffic_proto(traffic))

    @without_admission
    async def GetTraffic(self, request, context) -> model_admin_pb2.GetTrafficResponse:
        return model_admin_pb2.GetTrafficResponse(traffic=_traffic_proto(self._registry.get_traffic()))
