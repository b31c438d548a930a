"""Throughput of the serving path against a running stack, next to the same work done in-process.

    .venv/bin/python benchmarks/load.py --model-dir MODELS [--data data/amazon_clothing_2014_msl]
        [--levels 1,4,16,64,256] [--seconds 8] [--ranker localhost:50050 --catalog ... --encoder ...]

Starts nothing: it drives a stack that is already up (`make run`, or `whisperlite up`) through
grpc.aio with N closed-loop callers per level, and measures in this same run, in this process and
with the same code but no gRPC, the reference each ratio is taken against:

* in-process: the encoder batch-64 and batch-1 throughput; one full request (encode +
  personalize + exact search over every catalog vector + re-score), one at a time; and the same
  pipeline batched (64 requests per encoder call, one matrix search).
* Recommend, new request texts (every call misses the encoder's cache) and repeated texts (a
  pool of texts warmed first: the encoder answers from its cache), each for a user the model
  knows and for an unknown one (text-only path), and repeated texts for the known user with their
  history served (`include_history_items`: what leaving it out, the default, costs); the sweep
  gives accepted calls/s, p50, p99, refusals (RESOURCE_EXHAUSTED: admission control shed them; a refused caller waits the server's
  retry-after-ms hint) and other failures.
* CatalogService.Search alone (top 10 without vectors, and the ranker's call) and
  QueryEncoderService.Embed alone (one new text per call).

The in-process reference runs while the stack is idle; the load client shares the machine with the
stack (its own CPU is part of every remote figure). One table at the end gives every ratio issue 15 names.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import psutil
import torch

from encoder_bench import ADJECTIVES, COLORS, ITEMS, OCCASIONS, queries
from whisperlite.core.clients.errors import retry_after_seconds
from whisperlite.core.dataset import most_active_user
from whisperlite.core.encoders import load_encoder
from whisperlite.core.personalization import PersonalizationModel
from whisperlite.core.topology import CATALOG, QUERY_ENCODER, RANKER
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, query_encoder_pb2, query_encoder_pb2_grpc, ranker_pb2, ranker_pb2_grpc

TOP_K = 10
CANDIDATES = 50  # the ranker's default --candidates
HISTORY_SERVED = "Recommend, repeated texts, known user, history served (include_history_items)"
REPEATED_POOL = 32  # distinct texts behind the "repeated" load: all in the encoder's cache after warm-up
MAX_MESSAGE_BYTES = 64 << 20
ENCODER_CALLERS = 32  # the encoder figure


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a local process, all its threads."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def fresh_text(n: int) -> str:
    """The n-th of distinct shopper-style requests, in constant time (every call an encoder cache miss)."""
    words = (ADJECTIVES[n % 10], COLORS[n // 10 % 8], ITEMS[n // 80 % 10], OCCASIONS[n // 800 % 6])
    return "a {} {} {} for {} #{}".format(*words, n)


def fresh_texts(count: int, start: int) -> list[str]:
    return [fresh_text(n) for n in range(start, start + count)]


@dataclass
class Level:
    callers: int
    seconds: float
    latencies: list[float]
    refused: int = 0
    failed: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds spent during the level

    def cpu_ms_per_call(self, name: str) -> float:
        return 1e3 * self.cpu[name] / max(1, len(self.latencies))

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if self.latencies else float("nan")


async def closed_loop(call: Callable[[int, int], Awaitable], callers: int, seconds: float, processes: dict[str, int]) -> Level:
    """`callers` tasks, each calling `call(worker, n)` back to back for `seconds`; CPU of `processes` measured meanwhile."""
    level = Level(callers, seconds, [])
    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    end = time.perf_counter() + seconds

    async def caller(worker: int) -> None:
        for n in itertools.count():
            if time.perf_counter() >= end:
                return
            started = time.perf_counter()
            try:
                await call(worker, n)
                level.latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    level.refused += 1
                    await asyncio.sleep(retry_after_seconds(error) or 0.05)
                else:
                    level.failed += 1

    await asyncio.gather(*(caller(worker) for worker in range(callers)))
    level.cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in processes.items()}
    return level


def catalog_vectors(address: str) -> tuple[list[str], np.ndarray]:
    """Every item id and vector, paged out of the running catalog: the in-process search runs over the same vectors."""
    ids, vectors, token = [], [], ""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        while True:
            page = stub.ListItems(catalog_pb2.ListItemsRequest(page_token=token, include_vectors=True), timeout=120)
            for item in page.items:
                ids.append(item.item_id)
                vectors.append(np.asarray(item.vector, dtype=np.float32))
            token = page.next_page_token
            if not token:
                return ids, np.stack(vectors)


def top_candidates(cosines: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest cosines per row, best first (exact search)."""
    count = min(count, cosines.shape[-1])
    part = np.argpartition(-cosines, count - 1, axis=-1)[..., :count]
    order = np.argsort(-np.take_along_axis(cosines, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Runs the body with `count` torch CPU threads: the encoder service uses torch's default, the ranker one."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def in_process(encoder, model: PersonalizationModel, item_ids: list[str], items: np.ndarray, user: str, repeats: int) -> dict:
    """The reference figures: the same encoder, network and vectors, called directly, each on the
    torch threads its service uses (the ranker's network on one: see its --torch-threads)."""
    encoder.encode_texts(fresh_texts(128, 90_000_000), batch_size=64)  # warm-up
    batch = fresh_texts(64 * 8, 91_000_000)
    # The encoder on torch's default threads and on one, the faster kept: on a busy machine a
    # second thread spin-waits, and the reference is the best this process can do.
    rates = {}
    for threads in sorted({1, torch.get_num_threads()}):
        with torch_threads(threads):
            batched = []
            for _ in range(repeats):
                started = time.perf_counter()
                encoder.encode_texts(batch, batch_size=64)
                batched.append(len(batch) / (time.perf_counter() - started))
            single_texts = fresh_texts(100, 92_000_000 + 1000 * threads)
            started = time.perf_counter()
            for text in single_texts:
                encoder.encode_texts([text])
            rates[threads] = (statistics.median(batched), len(single_texts) / (time.perf_counter() - started))
    encoder_threads = max(rates, key=lambda threads: rates[threads][0])
    single_threads = max(rates, key=lambda threads: rates[threads][1])
    batch64, batch1 = rates[encoder_threads][0], rates[single_threads][1]

    full, search_score = [], []
    for text in fresh_texts(200, 93_000_000):
        started = time.perf_counter()
        with torch_threads(single_threads):
            query = encoder.encode_texts([text])[0]
        with torch_threads(1):
            personalized = model.personalize(query, user)
            searched = time.perf_counter()
            candidates = top_candidates(items @ personalized.vector, CANDIDATES)
            vectors = items[candidates]
            scores = model.score(personalized, vectors, [item_ids[c] for c in candidates])  # ids: a sequence part's rows
            _ = vectors @ query, vectors @ personalized.taste  # the response's query_match and personal_affinity
            np.argsort(-scores, kind="stable")[:TOP_K]
        done = time.perf_counter()
        full.append(done - started)
        search_score.append(done - searched)

    taste = model.user_taste(user)
    pipeline = []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch_threads(encoder_threads):
            query_vectors = encoder.encode_texts(batch, batch_size=64)
        with torch_threads(1):
            personalize_and_search(model, query_vectors, taste, items)
        pipeline.append(len(batch) / (time.perf_counter() - started))
    return {
        "encoder_threads": encoder_threads,
        "single_threads": single_threads,
        "batch64": batch64,
        "batch1": batch1,
        "full_p50_ms": statistics.median(full) * 1e3,
        "search_score_p50_ms": statistics.median(search_score) * 1e3,
        "pipeline_batched": statistics.median(pipeline),
    }


def personalize_and_search(model: PersonalizationModel, query_vectors: np.ndarray, taste: np.ndarray, items: np.ndarray) -> None:
    """Batches of 64 requests: one personalize_batch and one matrix search each, then each request's re-score."""
    for start in range(0, len(query_vectors), 64):
        q = query_vectors[start : start + 64]
        p = model.personalize_batch(q, np.repeat(taste[None, :], len(q), axis=0))
        candidates = top_candidates(p @ items.T, CANDIDATES)
        for row in range(len(q)):
            vectors = items[candidates[row]]
            scores = model.score(p[row], vectors)
            _ = vectors @ q[row], vectors @ taste
            np.argsort(-scores, kind="stable")[:TOP_K]


async def remote(args, user: str, probe_vector: list[float]) -> tuple[dict[str, list[Level]], int]:
    """Every workload's levels, and of the repeated texts how many the known user's history changed the answer to."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    async with (
        grpc.aio.insecure_channel(args.ranker, options=options) as ranker_channel,
        grpc.aio.insecure_channel(args.catalog, options=options) as catalog_channel,
        grpc.aio.insecure_channel(args.encoder, options=options) as encoder_channel,
    ):
        ranker = ranker_pb2_grpc.RankerServiceStub(ranker_channel)
        catalog = catalog_pb2_grpc.CatalogServiceStub(catalog_channel)
        encoder = query_encoder_pb2_grpc.QueryEncoderServiceStub(encoder_channel)
        pool = queries(REPEATED_POOL, offset=0)
        changed_by_history = 0
        for text in pool:  # the repeated texts are in the encoder's cache before any level runs
            left_out = await ranker.Recommend(ranker_pb2.RecommendRequest(user_id=user, query=text, top_k=TOP_K), timeout=30)
            served = await ranker.Recommend(
                ranker_pb2.RecommendRequest(user_id=user, query=text, top_k=TOP_K, include_history_items=True), timeout=30
            )
            # Leaving the user's history out costs a GetItems only where their history reached the top k.
            changed_by_history += [found.item.item_id for found in left_out.items] != [found.item.item_id for found in served.items]
        fresh = itertools.count(int(time.time()) % 90_000 * 1000)  # texts no earlier run sent either (runs a minute apart)

        def recommend(user_id: str, repeated: bool, include_history_items: bool = False) -> Callable[[int, int], Awaitable]:
            def call(worker: int, n: int) -> Awaitable:
                text = pool[(worker + n) % len(pool)] if repeated else fresh_text(next(fresh))
                request = ranker_pb2.RecommendRequest(user_id=user_id, query=text, top_k=TOP_K, include_history_items=include_history_items)
                return ranker.Recommend(request, timeout=30)
            return call

        def embed(worker: int, n: int) -> Awaitable:
            return encoder.Embed(query_encoder_pb2.EmbedRequest(texts=[fresh_text(next(fresh))]), timeout=30)

        def search(top_k: int, include_vectors: bool) -> Callable[[int, int], Awaitable]:
            request = catalog_pb2.SearchRequest(vector=probe_vector, top_k=top_k, include_vectors=include_vectors)
            return lambda worker, n: catalog.Search(request, timeout=30)

        workloads = {
            "Recommend, new texts, known user": recommend(user, repeated=False),
            "Recommend, new texts, unknown user": recommend("", repeated=False),
            "Recommend, repeated texts, known user": recommend(user, repeated=True),
            "Recommend, repeated texts, unknown user": recommend("", repeated=True),
            HISTORY_SERVED: recommend(user, repeated=True, include_history_items=True),
            f"Search top {TOP_K}, no vectors": search(TOP_K, False),
            f"Search top {CANDIDATES} with vectors (the ranker's call)": search(CANDIDATES, True),
        }
        results: dict[str, list[Level]] = {}
        for name, call in workloads.items():
            results[name] = [await closed_loop(call, callers, args.seconds, args.processes) for callers in args.levels]
        results["Embed, one new text"] = [
            await closed_loop(embed, callers, args.seconds, args.processes) for callers in sorted({1, ENCODER_CALLERS})
        ]
        return results, changed_by_history


def print_report(args, machine: str, reference: dict, results: dict[str, list[Level]], changed_by_history: int) -> None:
    print(f"\n{machine}; {args.seconds:g} s per level, closed-loop grpc.aio callers; refused callers wait the server's retry hint\n")
    print("In-process reference (same code, no gRPC), measured in this run:\n")
    print(f"- MiniLM batch-64: {reference['batch64']:.0f} texts/s; batch-1: {reference['batch1']:.0f} texts/s "
          f"(on {reference['encoder_threads']} and {reference['single_threads']} torch thread(s), the faster of 1 and the default "
          "for each; the network on one)")
    print(f"- one full request (encode + personalize + exact search over {reference['items']:,} vectors + re-score): "
          f"p50 {reference['full_p50_ms']:.1f} ms, of which search + score {reference['search_score_p50_ms']:.2f} ms")
    print(f"- the pipeline batched (64 requests per encoder call, one matrix search): {reference['pipeline_batched']:.0f} requests/s\n")
    processes = list(args.processes)
    print("| workload | callers | accepted/s | p50 ms | p99 ms | refused | failed |" + "".join(f" {name} CPU ms/call |" for name in processes))
    print("|---|---|---|---|---|---|---|" + "---|" * len(processes))
    for name, levels in results.items():
        for level in levels:
            cpu = "".join(f" {level.cpu_ms_per_call(process):.2f} |" for process in processes)
            print(f"| {name} | {level.callers} | {level.rate:.0f} | {level.ms(50):.1f} | {level.ms(99):.0f} | {level.refused} | {level.failed} |{cpu}")

    def peak(name: str) -> Level:
        return max(results[name], key=lambda level: level.rate)

    def at(name: str, callers: int) -> Level:
        return next(level for level in results[name] if level.callers == callers)

    new_known = peak("Recommend, new texts, known user")
    cached = max(peak("Recommend, repeated texts, known user"), peak("Recommend, repeated texts, unknown user"), key=lambda level: level.rate)
    idle = at("Recommend, new texts, known user", 1)
    encoder_32 = at("Embed, one new text", ENCODER_CALLERS)
    search_call = at(f"Search top {CANDIDATES} with vectors (the ranker's call)", 1)
    history_left_out, history_served = peak("Recommend, repeated texts, known user"), peak(HISTORY_SERVED)
    history_idle_left_out, history_idle_served = at("Recommend, repeated texts, known user", 1), at(HISTORY_SERVED, 1)
    rows = [
        ("Recommend saturation, new texts / in-process pipeline batched", f"{new_known.rate:.0f} rps at {new_known.callers} / {reference['pipeline_batched']:.0f}",
         new_known.rate / reference["pipeline_batched"], ">= 0.5"),
        ("Recommend saturation, new texts / encoder batch-64 in-process", f"{new_known.rate:.0f} / {reference['batch64']:.0f}",
         new_known.rate / reference["batch64"], ""),
        ("Recommend saturation, repeated texts (rps)", f"{cached.rate:.0f} rps at {cached.callers} callers (p99 {cached.ms(99):.0f} ms)",
         cached.rate / 400, ">= 400 rps (ratio to 400)"),
        ("Idle Recommend p50 / in-process full request p50", f"{idle.ms(50):.1f} / {reference['full_p50_ms']:.1f} ms",
         idle.ms(50) / reference["full_p50_ms"], "<= 1.15"),
        (f"Encoder service at {ENCODER_CALLERS} callers / in-process batch-64", f"{encoder_32.rate:.0f} / {reference['batch64']:.0f} texts/s",
         encoder_32.rate / reference["batch64"], ">= 0.8"),
        ("Encoder service at 1 caller / in-process batch-1", f"{at('Embed, one new text', 1).rate:.0f} / {reference['batch1']:.0f} texts/s",
         at("Embed, one new text", 1).rate / reference["batch1"], ""),
        (f"Search top {CANDIDATES} with vectors p50 / in-process search + score p50", f"{search_call.ms(50):.2f} / {reference['search_score_p50_ms']:.2f} ms",
         search_call.ms(50) / reference["search_score_p50_ms"], ""),
        ("Known user, repeated texts, history left out / served: saturation",
         f"{history_left_out.rate:.0f} / {history_served.rate:.0f} rps ({changed_by_history} of {REPEATED_POOL} texts' top {TOP_K} held history)",
         history_left_out.rate / history_served.rate, ""),
        ("Known user, repeated texts, history left out / served: idle p50", f"{history_idle_left_out.ms(50):.1f} / {history_idle_served.ms(50):.1f} ms",
         history_idle_left_out.ms(50) / history_idle_served.ms(50), "<= 1.10 (issue 13's ranker p50 bound)"),
    ]
    print("\n| ratio | figures | ratio | target |\n|---|---|---|---|")
    for name, figures, ratio, target in rows:
        print(f"| {name} | {figures} | {ratio:.2f} | {target} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranker", default=RANKER.local_address)
    parser.add_argument("--catalog", default=CATALOG.local_address)
    parser.add_argument("--encoder", default=QUERY_ENCODER.local_address)
    parser.add_argument("--model-dir", required=True, help="the model the ranker serves (its newest version), for the in-process reference")
    parser.add_argument("--data", help="canonical dataset, to pick its most active user (default: the model's first user)")
    parser.add_argument("--levels", default="1,4,16,64,256", help="comma-separated caller counts (1 is always run: the idle ratios need it)")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each level")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the in-process batched measurements (median)")
    parser.add_argument("--cpu-of", default="", metavar="NAME=PID,...",
                        help="local processes whose CPU time per accepted call the table shows, e.g. ranker=123,catalog=456,milvus=789 "
                        "(the load client itself is always counted)")
    args = parser.parse_args()
    try:
        levels = {int(level) for level in args.levels.split(",") if level.strip()}
    except ValueError:
        parser.error(f"--levels: comma-separated whole numbers, got {args.levels!r}")
    if min(levels, default=1) < 1:
        parser.error(f"--levels: caller counts must be at least 1, got {args.levels!r}")
    args.levels = sorted(levels | {1})
    args.processes = dict((name, int(pid)) for name, _, pid in (entry.partition("=") for entry in args.cpu_of.split(",") if entry))
    args.processes["client"] = os.getpid()

    model = PersonalizationModel.load(args.model_dir)
    user = most_active_user(args.data) if args.data else None
    if user is None or not model.knows_user(user):
        user = model.user_ids[0]
    encoder = load_encoder()
    item_ids, items = catalog_vectors(args.catalog)
    reference = in_process(encoder, model, item_ids, items, user, args.repeats) | {"items": len(items)}
    probe = encoder.encode_texts(["a light summer dress"])[0].tolist()
    results, changed_by_history = asyncio.run(remote(args, user, probe))
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print_report(args, machine, reference, results, changed_by_history)


if __name__ == "__main__":
    main()
