"""Embeds items upserted without a vector, through the query encoder, in the collection's vector space.

While the catalog serves, the encoder's health is checked (`watch`, services/common/probing.py): an encoder that answers
nothing (frozen, or gone) makes embedding fail at once with UNAVAILABLE naming it, and lets go of the upserts waiting on
it. They used to wait up to --encoder-timeout-seconds (120 s) holding admission slots, so a frozen encoder had the
catalog refuse plain reads as overloaded (429 at the gateway) for as long as it lasted.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from grpc_health.v1 import health_pb2_grpc

from whisperlite.core.channels import create_channel
from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.clients.errors import wait_until_ready
from whisperlite.core.clients.query_encoder import BULK, EncoderModel, QueryEncoderClient
from whisperlite.core.errors import FailedPrecondition, InvalidArgument
from whisperlite.core.item_text import item_text
from whisperlite.core.text import has_visible_characters
from whisperlite.core.topology import QUERY_ENCODER
from whisperlite.core.vector_space import require_same_encoder
from whisperlite.services.common.outages import Outages
from whisperlite.services.common.probing import ProbeSettings, answers_health_checks, keep_probing, outage_recorder

log = logging.getLogger("whisperlite.catalog.embedding")

# Texts per Embed call (fewer when the encoder accepts fewer): small enough that one call's work
# fits its deadline on a CPU.
EMBED_BATCH = 128


ENCODER = "query encoder"  # as refusals and the outage name it
STILL_SERVED = "items sent with vectors, reads and searches are still answered"


class ItemEmbedder:
    def __init__(
        self, address: str, timeout_seconds: float = 120.0, security: ClientSecurity = PLAINTEXT, probes: ProbeSettings = ProbeSettings()
    ):
        self.address = address
        self._security = security
        self._timeout = timeout_seconds
        self._probes = probes
        self._channel = None
        self._client: QueryEncoderClient | None = None
        self._model: EncoderModel | None = None
        self.outages = Outages("catalog")

    async def watch(self) -> None:
        """Checks the encoder's health until cancelled (while the catalog serves)."""
        self._encoder()
        record = outage_recorder(
            self.outages, ENCODER, self.address, self._probes,
            on_down=lambda reason: log.error("query encoder down: items without vectors are refused at once until it answers", extra={"reason": reason}),
            on_up=lambda: log.warning("query encoder answers again"),
        )  # fmt: skip
        stub = health_pb2_grpc.HealthStub(self._channel)
        await keep_probing(functools.partial(answers_health_checks, stub, QUERY_ENCODER.grpc_service, self._probes), self._probes, record)

    def _encoder(self) -> QueryEncoderClient:
        if self._client is None:
            self._channel = create_channel(self.address, security=self._security)
            self._client = QueryEncoderClient(self._channel, self._timeout, self.address)
        return self._client

    async def model(self) -> EncoderModel:
        """The encoder's model; waits up to the call timeout for an encoder that is still starting."""
        if self._model is None:
            self._model = await wait_until_ready(self._encoder().model, self._timeout)
        return self._model

    async def embed_items(self, titles_and_texts: list[tuple[str, str]], expected_model: str, names: list[str]) -> np.ndarray:
        """Vectors for the item text of each (title, text), in order; refuses a different model's vectors. `names`
        say how a refusal names each item (the caller's field, e.g. "items[3]"), not as the encoder's texts[k]."""
        model = await self.model()
        if expected_model:
            require_same_encoder(
                "the catalog's vectors", expected_model, f"the query encoder at {self.address} serves", model.name,
                hint="send vectors with the items or point the catalog at a matching encoder",
            )
        # The encoder refuses input longer than its limit rather than cutting it, so the catalog
        # sends the leading part (the stored text stays whole).
        texts = [item_text(title, text, max_chars=model.max_text_chars) for title, text in titles_and_texts]
        for name, text in zip(names, texts, strict=True):
            if not has_visible_characters(text):  # the encoder would refuse it as its own texts[k]
                read = f"within the first {model.max_text_chars} characters of its title and text, the part the encoder reads"
                raise InvalidArgument(f"{name}: without a vector it needs a visible character to embed, {read}")
        vectors = []
        batch_size = min(EMBED_BATCH, model.max_inputs or EMBED_BATCH)
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            embedded = await self.outages.during(ENCODER, lambda: self._encoder().embed_texts(batch, priority=BULK), STILL_SERVED)
            if embedded.model_name != model.name:
                self._model = None  # the encoder was swapped under us: re-read it next time
                raise FailedPrecondition(f"the query encoder changed model mid-request ({model.name!r} -> {embedded.model_name!r})")
            vectors.append(embedded.vectors)
        return np.concatenate(vectors) if vectors else np.zeros((0, model.dimension), dtype=np.float32)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._client = None
