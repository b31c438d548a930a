"""Flags' defaults read from the environment are checked as the flags are: a bad value stops start-up naming the
variable, instead of surfacing later (an index type at the first ingest) or not at all."""

import importlib
import os
from unittest import mock

import pytest

from whisperlite.core.topology import CATALOG, GATEWAY, QUERY_ENCODER, RANKER


def parser_with(module: str, **env: str):
    with mock.patch.dict(os.environ, env, clear=True):
        return importlib.import_module(module).build_parser()


@pytest.mark.parametrize(
    ("service", "variable", "value", "message"),
    [
        (CATALOG, "CATALOG_SEARCH_INDEX", "faiss", "must be one of auto, memory, milvus, got 'faiss'"),
        (CATALOG, "CATALOG_INDEX_TYPE", "hnsw", "must be one of AUTOINDEX, FLAT, IVF_FLAT, HNSW, got 'hnsw'"),
        (QUERY_ENCODER, "QUERY_ENCODER_BACKEND", "bert", "must be one of minilm, clip, got 'bert'"),
        (GATEWAY, "GATEWAY_STUDY", "yes", "must be one of on, off, got 'yes'"),
        (GATEWAY, "GATEWAY_PORT", "80a", "must be an integer, got '80a'"),
        (GATEWAY, "GATEWAY_PORT", "99999", "must be a port from 0 to 65535, got 99999"),  # it bound the socket to 34463
        (CATALOG, "CATALOG_METRICS_PORT", "-1", "must be a port from 0 to 65535, got -1"),
        (GATEWAY, "GATEWAY_BLIND", "maybe", "must be true or false, got 'maybe'"),
        (RANKER, "RANKER_DEADLINE_SECONDS", "ten", "must be a number, got 'ten'"),
    ],
)
def test_a_bad_environment_value_stops_start_up_naming_the_variable(service, variable, value, message):
    with pytest.raises(SystemExit) as stopped:
        parser_with(service.module, **{variable: value})
    assert str(stopped.value) == f"environment variable {variable} {message}"


@pytest.mark.parametrize(
    ("service", "variable", "value", "flag"),
    [
        (CATALOG, "CATALOG_INDEX_TYPE", "IVF_FLAT", "index_type"),
        (CATALOG, "CATALOG_SEARCH_INDEX", "milvus", "search_index"),
        (QUERY_ENCODER, "QUERY_ENCODER_BACKEND", "clip", "backend"),
        (GATEWAY, "GATEWAY_STUDY", "off", "study"),
    ],
)
def test_a_good_environment_value_is_the_default_and_an_empty_one_leaves_the_built_in(service, variable, value, flag):
    assert getattr(parser_with(service.module, **{variable: value}).parse_args([]), flag) == value
    built_in = getattr(parser_with(service.module).parse_args([]), flag)
    assert getattr(parser_with(service.module, **{variable: ""}).parse_args([]), flag) == built_in
