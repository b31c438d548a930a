"""The query encoder over real gRPC on loopback: one server process per backend."""

import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures_encoder import TINY_CLIP_DIM, png_bytes
from tests.servers import REPO, start_service
from whisperlite.core.encoders import load_encoder
from whisperlite.v1 import query_encoder_pb2, query_encoder_pb2_grpc

MAX_TEXT_CHARS = 300
MAX_INPUTS = 40


@pytest.fixture(scope="module", params=["minilm", "clip"])
def backend(request, tiny_clip_dir):
    """(backend name, model argument, running service)."""
    model = str(tiny_clip_dir) if request.param == "clip" else None
    args = ["--backend", request.param, "--device", "cpu", "--max-wait-ms", "100", "--max-batch-size", "64"]
    args += ["--max-text-chars", str(MAX_TEXT_CHARS), "--max-inputs", str(MAX_INPUTS), "--cache-size", "1000"]
    if model:
        args += ["--model", model]
    log_dir = request.getfixturevalue("tmp_path_factory").mktemp(f"{request.param}-logs")
    service = start_service("query-encoder", log_dir, *args, env={"HF_HUB_OFFLINE": "1"})
    yield request.param, model, service
    assert service.stop() == 0, service.log()[-2000:]


@pytest.fixture(scope="module")
def stub(backend):
    with grpc.insecure_channel(backend[2].address) as channel:
        yield query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)


def metrics(service) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(service.metrics_url, timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def embed(stub, texts=(), images=()):
    return stub.Embed(query_encoder_pb2.EmbedRequest(texts=list(texts), images=list(images)), timeout=60)


def as_matrix(vectors) -> np.ndarray:
    return np.array([list(v.values) for v in vectors], dtype=np.float32)


def test_model_info_describes_the_backend(backend, stub):
    name, model, _ = backend
    info = stub.GetModelInfo(query_encoder_pb2.GetModelInfoRequest(), timeout=10)
    expected = {
        "minilm": ("sentence-transformers/all-MiniLM-L6-v2", 384, False),
        "clip": (model, TINY_CLIP_DIM, True),
    }[name]
    assert (info.model_name, info.dimension, info.supports_images) == expected
    assert (info.backend, info.device, info.max_text_chars) == (name, "cpu", MAX_TEXT_CHARS)


def test_embed_returns_the_encoders_vectors_in_order(backend, stub):
    name, model, _ = backend
    texts = ["black leather boots", "a light dress for a summer wedding", "black leather boots"]
    response = embed(stub, texts)
    vectors = as_matrix(response.text_vectors)
    reference = load_encoder(name, model, device="cpu").encode_texts(texts)
    assert response.dimension == vectors.shape[1] and response.model_name
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert len(response.image_vectors) == 0


def test_concurrent_calls_are_merged_into_batches(backend, stub):
    service = backend[2]
    before = metrics(service)
    calls = [stub.Embed.future(query_encoder_pb2.EmbedRequest(texts=[f"batch probe {i}"]), timeout=60) for i in range(16)]
    vectors = [as_matrix(call.result().text_vectors) for call in calls]
    after = metrics(service)
    key = ("whisperlite_encoder_batch_size_count", (("kind", "text"),))
    total = ("whisperlite_encoder_batch_size_sum", (("kind", "text"),))
    batches = after[key] - before.get(key, 0)
    assert after[total] - before.get(total, 0) == 16  # every text computed exactly once
    assert 1 <= batches < 16, f"16 concurrent calls ran as {batches} model calls"
    assert all(v.shape[0] == 1 for v in vectors)
    assert after[("whisperlite_encoder_inference_seconds_count", (("kind", "text"),))] > before.get(
        ("whisperlite_encoder_inference_seconds_count", (("kind", "text"),)), 0
    )


def test_repeated_queries_are_served_from_the_cache(backend, stub):
    service = backend[2]
    hits, misses = ("whisperlite_encoder_cache_hits_total", ()), ("whisperlite_encoder_cache_misses_total", ())
    before = metrics(service)
    first = as_matrix(embed(stub, ["cache probe"]).text_vectors)
    middle = metrics(service)
    second = as_matrix(embed(stub, ["cache probe", "cache probe", "another probe"]).text_vectors)
    after = metrics(service)
    assert (middle[hits] - before[hits], middle[misses] - before[misses]) == (0, 1)
    assert (after[hits] - middle[hits], after[misses] - middle[misses]) == (2, 1)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(second[0], second[1])


@pytest.mark.parametrize(
    ("texts", "images", "message"),
    [
        ([], [], "texts: at least one text"),
        (["fine", "   "], [], "texts[1]: must hold a visible character"),
        (["fine", ""], [], "texts[1]: must hold a visible character"),
        # each embeds as the empty text: a meaningless vector served as if it were an answer
        (["\x00"], [], "texts[0]: must hold a visible character"),
        (["\u200b\ufeff\u00ad"], [], "texts[0]: must hold a visible character"),
        (["\u0301"], [], "texts[0]: must hold a visible character"),
        (["x" * (MAX_TEXT_CHARS + 1)], [], f"texts[0]: {MAX_TEXT_CHARS + 1} characters, the limit is {MAX_TEXT_CHARS}"),
        (["q"] * (MAX_INPUTS + 1), [], f"at most {MAX_INPUTS} inputs per request, got {MAX_INPUTS + 1}"),
    ],
)
def test_bad_texts_are_invalid_argument(stub, texts, images, message):
    with pytest.raises(grpc.RpcError) as raised:
        embed(stub, texts, images)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()


def test_the_priority_header_sent_twice_is_refused(stub):
    """Which of two values would count? The last one silently won."""
    request = query_encoder_pb2.EmbedRequest(texts=["red dress"])
    with pytest.raises(grpc.RpcError) as raised:
        stub.Embed(request, metadata=(("x-whisperlite-priority", "bulk"), ("x-whisperlite-priority", "interactive")), timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "metadata x-whisperlite-priority: sent 2 times; send it once"


def test_images_on_a_text_only_backend_or_undecodable_are_invalid_argument(backend, stub):
    name = backend[0]
    good = png_bytes((10, 200, 10))
    cases = [
        ([good, b""], "images[1]: empty bytes"),
        ([good, good, b"\x89PNG broken"], "images[2]: not a decodable image (PNG, JPEG, WebP, ...)"),
        # Refused from the header, before decoding: 140 KB of PNG decoded to gigabytes, a 200-byte strip to 620 MB.
        ([png_bytes((9, 9, 9), (7000, 7000))], "images[0]: 7000 x 7000 pixels; at most 48,000,000 pixels and an aspect ratio of 20:1"),
        ([good, png_bytes((9, 9, 9), (1, 3000))], "images[1]: 1 x 3000 pixels; at most"),
    ]
    if name == "minilm":
        cases = [([good], "images: the minilm backend embeds text only")]
    for images, message in cases:
        with pytest.raises(grpc.RpcError) as raised:
            embed(stub, ["red dress"], images)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in raised.value.details()


def _camera_jpeg(size: tuple[int, int]) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def test_clip_embeds_images_and_texts_together(backend, stub):
    name, model, _ = backend
    if name != "clip":
        pytest.skip("images need an image backend")
    images = [png_bytes((200, 10, 10)), png_bytes((10, 10, 200)), _camera_jpeg((8000, 6000))]  # a 48 MP phone photo too
    response = embed(stub, ["red dress"], images)
    vectors = as_matrix(response.image_vectors)
    reference = load_encoder("clip", model, device="cpu").encode_images(images)
    assert vectors.shape == (3, TINY_CLIP_DIM) and len(response.text_vectors) == 1
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_a_model_that_cannot_load_stops_the_server_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "whisperlite", "serve", "query-encoder", "--backend", "clip", "--model",
         str(tmp_path / "missing"), "--port", "0", "--metrics-port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode != 0
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def test_torch_threads_bounds_the_models_cores(tmp_path):
    """--torch-threads 1: the model computes on one core (the stack's setting beside the ranker and the catalog)."""
    service = start_service("query-encoder", tmp_path, "--device", "cpu", "--torch-threads", "1", env={"HF_HUB_OFFLINE": "1"})
    try:
        assert '"torch_threads": 1' in service.log()
        texts = [f"a warm wool coat number {n} for a windy winter walk by the sea" for n in range(256)]
        with grpc.insecure_channel(service.address) as channel:
            stub = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
            embed(stub, ["warm up"])
            cpu_before, wall_before = _cpu_seconds(service.process.pid), time.monotonic()
            calls = [stub.Embed.future(query_encoder_pb2.EmbedRequest(texts=texts[i : i + 32]), timeout=120) for i in range(0, 256, 32)]
            assert all(len(call.result().text_vectors) == 32 for call in calls)
            cpu, wall = _cpu_seconds(service.process.pid) - cpu_before, time.monotonic() - wall_before
        # Torch's default would run each batch on every core; one thread (plus the event loop's
        # share) stays near one core's worth of CPU time.
        assert cpu / wall < 1.35, f"{cpu:.2f} s of CPU in {wall:.2f} s"
    finally:
        assert service.stop() == 0, service.log()[-2000:]


def test_a_negative_torch_threads_stops_the_server_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, "-m", "whisperlite", "serve", "query-encoder", "--torch-threads", "-1", "--port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "torch-threads: must be 0" in result.stderr and "Traceback" not in result.stderr

