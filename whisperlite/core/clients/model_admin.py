"""A small Python client for the ranker's ModelAdminService (model versions and the traffic split).

    from whisperlite.core.clients.model_admin import ModelAdminClient
    with ModelAdminClient("localhost:50050") as admin:
        for model in admin.list_models().models:
            print(model.version, model.state)
"""

from whisperlite.core.channels import create_sync_channel
from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.topology import RANKER
from whisperlite.v1 import model_admin_pb2, model_admin_pb2_grpc


class ModelAdminClient:
    # Loading and validating a version takes seconds (torch weights, smoke scoring): a longer default deadline.
    def __init__(self, address: str = RANKER.local_address, timeout_seconds: float = 120.0, security: ClientSecurity = PLAINTEXT):
        self._channel = create_sync_channel(address, security)
        self._stub = model_admin_pb2_grpc.ModelAdminServiceStub(self._channel)
        self._timeout = timeout_seconds
        self._security = security

    def list_models(self) -> model_admin_pb2.ListModelsResponse:
        return self._stub.ListModels(model_admin_pb2.ListModelsRequest(), timeout=self._timeout, metadata=self._security.metadata())

    def load_model(self, version: str) -> model_admin_pb2.LoadModelResponse:
        return self._stub.LoadModel(model_admin_pb2.LoadModelRequest(version=version), timeout=self._timeout, metadata=self._security.metadata())

    def set_traffic(self, candidate_version: str, candidate_percent: float, shadow: bool = False) -> model_admin_pb2.Traffic:
        request = model_admin_pb2.SetTrafficRequest(
            candidate_version=candidate_version, candidate_percent=candidate_percent, shadow=shadow
        )
        return self._stub.SetTraffic(request, timeout=self._timeout, metadata=self._security.metadata()).traffic

    def get_traffic(self) -> model_admin_pb2.Traffic:
        return self._stub.GetTraffic(model_admin_pb2.GetTrafficRequest(), timeout=self._timeout, metadata=self._security.metadata()).traffic

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ModelAdminClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
