"""The ranker's model registry without gRPC: pick-up of new versions, refusal of broken ones, rollback,
and the user-hash traffic split."""

import asyncio
import json
import logging
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from tests.fixtures_model import train_tiny_version
from tests.fixtures_permissions import command_prefix_denied, locked
from tests.servers import REPO
from whisperlite.core.errors import FailedPrecondition, InvalidArgument, NotFound
from whisperlite.core.model_versions import MANIFEST, resolve_version_dir
from whisperlite.core.personalization import WEIGHTS, PersonalizationModel
from whisperlite.services.ranker.admin_servicer import _version_proto
from whisperlite.shell.model_admin import previous_version
from whisperlite.services.ranker.models import (
    STATE_AVAILABLE,
    STATE_CANDIDATE,
    STATE_LIVE,
    STATE_REFUSED,
    ModelRegistry,
    ServingContract,
    user_bucket,
    watch,
)

DIM = 16
ENCODER = "test-encoder"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two real trained versions, oldest first (kept aside; tests copy them into their model folder)."""
    root = tmp_path_factory.mktemp("trained")
    return [train_tiny_version(root, ENCODER, DIM, seed=seed) for seed in (1, 2)]


@pytest.fixture
def contract():
    probe = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
    return ServingContract(ENCODER, DIM, probe / np.linalg.norm(probe))


def _version(directory) -> str:
    return json.loads((directory / MANIFEST).read_text())["version"]


def _copy_as(source, models, version: str, created: str):
    """A copy of a trained version under a new name and creation time (what a newer training run drops in)."""
    target = models / version
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest.update(version=version, created=created)
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


def _started(models, contract) -> ModelRegistry:
    registry = ModelRegistry(models)
    registry.start(contract)
    return registry


def test_a_new_version_is_picked_up_and_rollback_is_not_undone(trained, tmp_path, contract):
    models = tmp_path / "models"
    models.mkdir()
    old = shutil.copytree(trained[0], models / trained[0].name)
    registry = _started(models, contract)
    assert registry.traffic.live_version == _version(old)
    assert registry.poll() is None  # nothing new

    new = shutil.copytree(trained[1], models / trained[1].name)
    assert registry.poll() == _version(new)
    assert registry.traffic.live_version == _version(new)

    model, previous = registry.load(_version(old))  # rollback
    assert (model.version, previous) == (_version(old), _version(new))
    assert registry.poll() is None  # the newest was seen already: the rollback stands
    assert registry.traffic.live_version == _version(old)
    states = {entry.version: entry.state for entry in registry.list_models()}
    assert states == {_version(old): STATE_LIVE, _version(new): STATE_AVAILABLE}

    # docs/models.md makes a rollback permanent by moving the bad version out: what is left is older than
    # what was seen, so nothing is promoted.
    newest = _copy_as(trained[1], models, "tiny-newest", "2999-01-01T00:00:00+00:00")
    assert registry.poll() == "tiny-newest"
    registry.load(_version(old))
    shutil.move(newest, tmp_path / "moved-out")
    assert registry.poll() is None
    assert registry.traffic.live_version == _version(old)

    live_version = _version(old)
    shutil.rmtree(old)  # the live version's directory deleted: it still serves, and is still listed as live
    (live,) = [entry for entry in registry.list_models() if entry.version == live_version]
    assert live.state == STATE_LIVE and "no longer on disk" in live.error


def test_a_refused_version_does_not_hide_a_good_one_written_after_it(trained, tmp_path, contract):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(trained[0], models / trained[0].name)
    registry = _started(models, contract)
    _manifest_not_an_object(_copy_as(trained[1], models, "tiny-unreadable", "2999-06-01T00:00:00+00:00"))
    broken = _copy_as(trained[1], models, "tiny-broken", "2999-05-01T00:00:00+00:00")
    _garbage_weights(broken)
    assert registry.poll() is None
    _copy_as(trained[1], models, "tiny-good", "2999-01-01T00:00:00+00:00")  # created before the refused ones
    assert registry.poll() == "tiny-good"
    states = {entry.directory.name: (entry.state, entry.error) for entry in registry.list_models()}
    assert states["tiny-unreadable"][0] == STATE_REFUSED and "must be a JSON object" in states["tiny-unreadable"][1]
    assert states["tiny-broken"][0] == STATE_REFUSED
    with pytest.raises(NotFound) as missing:
        registry.load("x" * 100_000)
    assert len(str(missing.value)) < 400  # a huge name is not echoed whole (gRPC metadata holds 16 KB)


def test_a_second_directory_under_a_version_name_already_on_disk_is_refused(trained, tmp_path, contract):
    """It was promoted: two rows of the same live version in `model list`, two sets of weights behind one name."""
    models = tmp_path / "models"
    models.mkdir()
    live = shutil.copytree(trained[0], models / trained[0].name)
    registry = _started(models, contract)
    duplicate = _copy_as(trained[1], models, "tiny-dup", "2999-01-01T00:00:00+00:00")
    manifest = json.loads((duplicate / MANIFEST).read_text())
    (duplicate / MANIFEST).write_text(json.dumps({**manifest, "version": _version(live)}))
    assert registry.poll() is None
    assert registry.traffic.live_version == _version(live)
    (refused,) = [entry for entry in registry.list_models() if entry.directory == duplicate]
    assert refused.state == STATE_REFUSED and f"is also the version of {live}" in refused.error, refused.error


def test_a_restart_skips_versions_that_do_not_serve_and_serves_the_newest_that_does(trained, tmp_path, contract, caplog):
    """A half-written or stray version directory, or a newest version whose weights are broken, used to stop every
    restart (and so `up`'s whole stack), though older good versions were on disk. Start-up now skips each, listed as
    refused with its reason; only when no version serves does it stop, naming each."""
    models = tmp_path / "models"
    models.mkdir()
    good = shutil.copytree(trained[0], models / trained[0].name)
    _manifest_not_an_object(_copy_as(trained[1], models, "tiny-unreadable", "2999-06-01T00:00:00+00:00"))
    (models / "half-copied").mkdir()
    (models / "half-copied" / MANIFEST).write_text('{"version": "half')
    _garbage_weights(_copy_as(trained[1], models, "tiny-broken", "2999-05-01T00:00:00+00:00"))
    _nan_weights(_copy_as(trained[1], models, "tiny-nan", "2999-04-01T00:00:00+00:00"))
    registry = ModelRegistry(models)
    assert registry.start(contract).version == _version(good)
    states = {entry.directory.name: (entry.state, entry.error) for entry in registry.list_models()}
    assert states[good.name] == (STATE_LIVE, "")
    assert states["tiny-broken"][0] == STATE_REFUSED and "cannot be loaded: " in states["tiny-broken"][1]
    assert states["tiny-nan"][0] == STATE_REFUSED and "fuse.0.weight contains NaN or inf" in states["tiny-nan"][1]
    assert states["half-copied"][0] == states["tiny-unreadable"][0] == STATE_REFUSED
    refused = [record.model_dir for record in caplog.records if record.getMessage() == "model version refused at start-up"]
    assert sorted(Path(d).name for d in refused) == ["tiny-broken", "tiny-nan"]
    assert registry.poll() is None  # the refused newer versions are not promoted by the watcher either

    shutil.rmtree(good)
    with pytest.raises(FailedPrecondition, match=r"no version under it serves: .*half-copied.*JSONDecodeError") as nothing:
        ModelRegistry(models).start(contract)
    assert "tiny-broken" in str(nothing.value) and "tiny-nan" in str(nothing.value)


def test_a_restart_lists_an_older_version_that_does_not_load_as_refused(trained, tmp_path, contract):
    """Refusals live in memory: after a restart an older version with broken weights was listed as available, and
    `model rollback` picked it. The registry now tries each listed version once, and again only when its files change."""
    models = tmp_path / "models"
    models.mkdir()
    older_good = _copy_as(trained[0], models, "tiny-older-good", "2001-01-01T00:00:00+00:00")
    _garbage_weights(_copy_as(trained[0], models, "tiny-broken", "2002-01-01T00:00:00+00:00"))
    shutil.copytree(trained[1], models / trained[1].name)
    registry = _started(models, contract)
    assert {e.version: e.state for e in registry.list_models()}["tiny-broken"] == STATE_AVAILABLE  # not tried yet

    asyncio.run(watch(registry, 0))  # what a ranker started with --model-poll-seconds 0 runs once, then returns
    listed = registry.list_models()
    states = {entry.version: (entry.state, entry.error) for entry in listed}
    assert states["tiny-broken"][0] == STATE_REFUSED and "tiny-broken cannot be loaded: " in states["tiny-broken"][1]
    assert states["tiny-older-good"][0] == STATE_AVAILABLE
    assert states[_version(models / trained[1].name)][0] == STATE_LIVE
    assert previous_version([_version_proto(entry) for entry in listed]) == "tiny-older-good"
    assert registry.verify_listed() == []  # unchanged files are not loaded again

    shutil.rmtree(models / "tiny-broken")  # repaired in place: tried again, and available
    _copy_as(trained[0], models, "tiny-broken", "2002-01-01T00:00:00+00:00")
    (older_good / WEIGHTS).write_bytes(b"truncated")  # and a checked version broken later is caught too
    assert registry.verify_listed() == [str(older_good)]
    states = {entry.version: entry.state for entry in registry.list_models()}
    assert states["tiny-broken"] == STATE_AVAILABLE and states["tiny-older-good"] == STATE_REFUSED


def _nan_weights(directory):
    state = torch.load(directory / WEIGHTS, weights_only=True)
    state["fuse.0.weight"].fill_(float("nan"))
    torch.save(state, directory / WEIGHTS)
    return "network.pt: fuse.0.weight contains NaN or inf"


def _scores_overflow(directory):
    state = torch.load(directory / WEIGHTS, weights_only=True)
    state["log_logit_scale"].fill_(1000.0)  # finite, but exp() of it is inf: only scoring shows it
    torch.save(state, directory / WEIGHTS)
    return "smoke scoring of known user 'u0' gave NaN or inf scores"


def _garbage_weights(directory):
    (directory / WEIGHTS).write_bytes(b"half a file")
    return "tiny-broken cannot be loaded: "


def _other_encoder(directory):
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["encoder"] = "another/encoder"
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return "training vectors come from 'another/encoder' (16-d) but the query encoder serves 'test-encoder' (16-d)"


def _taste_row_nan(directory):
    tastes = np.load(directory / "user_tastes.npy")
    tastes[5] = np.nan  # a row the smoke scoring of user 0 never reads
    np.save(directory / "user_tastes.npy", tastes)
    return "user_tastes: contains NaN or inf (row 5)"


def _histories_past_the_end(directory):
    offsets = np.load(directory / "history_offsets.npy")
    offsets[-1] += 7  # user rows past the stored items: an IndexError at their first request
    np.save(directory / "history_offsets.npy", offsets)
    return "histories: offsets must run from 0 to"


def _manifest_not_an_object(directory):
    (directory / MANIFEST).write_text("[]")
    return "must be a JSON object, got list"


def _user_ids_too_large(directory):
    with (directory / "user_ids.json").open("ab") as file:  # far more than its users' ids can take: never read
        file.truncate(1 << 30)
    return "bytes is more than"


def _user_ids_not_a_list_of_ids(directory):
    n_users = len(json.loads((directory / "user_ids.json").read_text()))
    (directory / "user_ids.json").write_text(json.dumps(list(range(n_users))))
    return "user_ids.json: must be a JSON list of user ids"


@pytest.mark.parametrize(
    "corrupt",
    [_nan_weights, _scores_overflow, _garbage_weights, _other_encoder, _taste_row_nan, _histories_past_the_end, _user_ids_too_large, _user_ids_not_a_list_of_ids],
)
def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(corrupt, trained, tmp_path, contract):
    models = tmp_path / "models"
    models.mkdir()
    good = shutil.copytree(trained[0], models / trained[0].name)
    registry = _started(models, contract)
    broken = _copy_as(trained[1], models, "tiny-broken", "2999-01-01T00:00:00+00:00")
    reason = corrupt(broken)

    assert registry.poll() is None
    assert registry.traffic.live_version == _version(good)
    refused = next(entry for entry in registry.list_models() if entry.version == "tiny-broken")
    assert refused.state == STATE_REFUSED and reason in refused.error, refused.error
    with pytest.raises(FailedPrecondition, match=f"still serving {_version(good)}"):
        registry.load("tiny-broken")
    assert registry.poll() is None  # unchanged files are not retried on every poll

    shutil.rmtree(broken)  # the fixed version lands under the same name: its changed files are retried
    _copy_as(trained[1], models, "tiny-broken", "2999-01-01T00:00:00+00:00")
    assert registry.poll() == "tiny-broken"


def _live_and_candidate(trained, tmp_path, contract):
    """A registry serving the older version, with the newer one on disk beside it."""
    models = tmp_path / "models"
    models.mkdir()
    live, candidate = (shutil.copytree(v, models / v.name) for v in trained)
    registry = ModelRegistry(models)
    registry.start(contract)
    registry.load(_version(live))
    return registry, live, candidate


def test_traffic_split_sends_the_configured_share_and_is_stable_per_user(trained, tmp_path, contract):
    registry, live, candidate = _live_and_candidate(trained, tmp_path, contract)
    users = [f"user-{i}" for i in range(10_000)]
    for percent in (10.0, 37.5):
        traffic = registry.set_traffic(_version(candidate), percent, shadow=False)
        routed = {user: traffic.route(user).model.version for user in users}
        share = sum(version == _version(candidate) for version in routed.values()) / len(users)
        assert abs(share - percent / 100) <= 0.02, share
        again = registry.get_traffic()
        assert all(again.route(user).model.version == version for user, version in routed.items())
    # Growing the share only adds users: nobody who met the candidate at 10% goes back.
    at_10 = {user for user in users if user_bucket(user) < 10.0}
    assert all(registry.get_traffic().route(user).model.version == _version(candidate) for user in at_10)
    states = {entry.version: entry.state for entry in registry.list_models()}
    assert states == {_version(live): STATE_LIVE, _version(candidate): STATE_CANDIDATE}


def test_shadow_mode_answers_with_live_and_shadows_the_share(trained, tmp_path, contract):
    registry, live, candidate = _live_and_candidate(trained, tmp_path, contract)
    traffic = registry.set_traffic(_version(candidate), 50.0, shadow=True)
    routes = [traffic.route(f"user-{i}") for i in range(2000)]
    assert {route.model.version for route in routes} == {_version(live)}
    shadowed = sum(route.shadow is not None for route in routes) / len(routes)
    assert abs(shadowed - 0.5) <= 0.05
    # Promoting the candidate ends the split.
    registry.load(_version(candidate))
    assert registry.get_traffic().candidate is None and registry.get_traffic().live_version == _version(candidate)


def test_bad_admin_requests_get_precise_errors(trained, tmp_path, contract):
    models = tmp_path / "models"
    models.mkdir()
    live = shutil.copytree(trained[0], models / trained[0].name)
    registry = _started(models, contract)
    with pytest.raises(InvalidArgument, match="version: must name a version"):
        registry.load("")
    with pytest.raises(NotFound, match="no version 'nope'"):
        registry.load("nope")
    with pytest.raises(NotFound, match="no version 'nope'"):
        registry.set_traffic("nope", 10.0, shadow=False)
    for percent in (-1.0, 100.5, float("nan")):
        with pytest.raises(InvalidArgument, match="candidate_percent: must be between 0 and 100"):
            registry.set_traffic(_version(live), percent, shadow=False)
    with pytest.raises(InvalidArgument, match="is already live"):
        registry.set_traffic(_version(live), 10.0, shadow=False)
    with pytest.raises(InvalidArgument, match="candidate_version: needed"):
        registry.set_traffic("", 10.0, shadow=True)
    assert registry.traffic.live_version == _version(live)


def test_two_loaded_versions_share_the_user_index(trained):
    """Versions trained on the same users hold one user-id index between them."""
    first, second = (PersonalizationModel.load(directory) for directory in trained)
    assert first.version != second.version
    assert first.user_ids is second.user_ids
    other_users = PersonalizationModel.load(_copy_with_users(trained[1], trained[1].parent / "renamed-users"))
    assert other_users.user_ids is not first.user_ids and other_users.knows_user("renamed-u0")


def test_a_loaded_version_survives_its_files_rewritten_in_place(trained, tmp_path):
    """`cp new/* models/LIVE/` truncates the live version's files under it: a memory-mapped table then
    killed the process with SIGBUS at its next read. Run in a child process, so that a crash is a failure."""
    copy = shutil.copytree(trained[0], tmp_path / "live")
    script = f"""
import numpy as np
from whisperlite.core.personalization import PersonalizationModel
model = PersonalizationModel.load({str(copy)!r})
before = [model.personalize(np.ones({DIM}, np.float32), user).vector for user in model.user_ids[:5]]
for name in ("user_tastes.npy", "history_offsets.npy", "history_items.npy", "history_vectors.npy"):
    with open({str(copy)!r} + "/" + name, "r+b") as file:
        file.truncate(64)
after = [model.personalize(np.ones({DIM}, np.float32), user).vector for user in model.user_ids[:5]]
assert all(np.array_equal(b, a) for b, a in zip(before, after))
print("served on")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "served on" in done.stdout, (done.returncode, done.stderr[-2000:])


def _copy_with_users(source, target):
    shutil.copytree(source, target)
    ids = json.loads((target / "user_ids.json").read_text())
    (target / "user_ids.json").write_text(json.dumps([f"renamed-{uid}" for uid in ids]))
    return target


def test_a_version_that_knows_few_of_the_live_users_is_served_with_a_warning(trained, tmp_path, contract, caplog):
    """Such a version passes every check of its own (its users are simply others), and every shopper the live version
    knew got answers without their history, with nothing in the log."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(trained[0], models / trained[0].name)
    registry = _started(models, contract)
    caplog.set_level(logging.WARNING, logger="whisperlite.ranker")
    retrained = shutil.copytree(trained[1], models / trained[1].name)  # the same users, other weights
    assert registry.poll() == _version(retrained)
    assert "knows few of the live version's users" not in caplog.text
    strangers = _copy_with_users(trained[0], models / "strangers")
    manifest = json.loads((strangers / MANIFEST).read_text())
    (strangers / MANIFEST).write_text(json.dumps({**manifest, "version": "strangers", "created": "2999-01-01T00:00:00+00:00"}))
    assert registry.poll() == "strangers"  # served: the warning is for the operator, who may have meant it
    (warning,) = [record for record in caplog.records if "knows few of the live version's users" in record.getMessage()]
    assert (warning.version, warning.role, warning.live_users_known) == ("strangers", "live", 0)
    assert warning.live_users == registry.load(_version(retrained))[0].n_users > 0
    registry.set_traffic("strangers", 10.0, shadow=False)
    assert [record.role for record in caplog.records if "knows few" in record.getMessage()] == ["live", "live", "candidate"]


def test_a_text_only_ranker_picks_up_its_first_model(trained, tmp_path, contract):
    models = tmp_path / "models"
    models.mkdir()
    registry = _started(models, contract)
    assert registry.traffic.live is None and registry.traffic.route("u1").model is None
    assert registry.poll() is None
    shutil.copytree(trained[0], models / trained[0].name)
    assert registry.poll() == _version(trained[0])
    assert registry.traffic.route("u1").model.version == _version(trained[0])


def _refused_loads() -> float:
    return REGISTRY.get_sample_value("whisperlite_ranker_model_loads_total", {"outcome": "refused"}) or 0.0


# What a ranker run as a non-root user does with its model folder: start-up, the watcher, ListModels, a rollback, and
# `up`'s look at the newest version.
_AS_A_RANKER_THAT_MAY_NOT_READ_IT = """
import json, sys
import numpy as np
from prometheus_client import REGISTRY
from whisperlite.core.model_versions import resolve_version_dir
from whisperlite.services.ranker.models import ModelRegistry, ServingContract

models, encoder, dimension, probe, older = sys.argv[1:]
registry = ModelRegistry(models)
live = registry.start(ServingContract(encoder, int(dimension), np.load(probe))).version
for _ in range(3):
    registry.poll()
    registry.verify_listed()
listed = {entry.directory.name: [entry.state, entry.error] for entry in registry.list_models()}
rolled_back = registry.load(older)[0].version
print(json.dumps({"live": live, "listed": listed, "rolled_back": rolled_back,
                  "newest_for_up": resolve_version_dir(models).name,
                  "refused_loads": REGISTRY.get_sample_value("whisperlite_ranker_model_loads_total", {"outcome": "refused"})}))
"""


def test_a_folder_the_ranker_may_not_read_is_refused_and_every_other_version_serves(trained, tmp_path, contract):
    """Run as a non-root user (k8s `runAsUser`), one `chmod 000` folder in --model-dir raised PermissionError out of
    every scan of it: ListModels and LoadModel failed, so did every poll, and a restart exited with a traceback."""
    models = tmp_path / "models"
    models.mkdir()
    older, newer = (shutil.copytree(version, models / version.name) for version in trained)
    np.save(tmp_path / "probe.npy", contract.probe_query)
    with locked(_copy_as(trained[1], models, "tiny-locked", "2999-01-01T00:00:00+00:00")) as folder:  # newest: tried first
        command = [
            *command_prefix_denied(folder), sys.executable, "-c", _AS_A_RANKER_THAT_MAY_NOT_READ_IT,
            str(models), ENCODER, str(DIM), str(tmp_path / "probe.npy"), _version(older),
        ]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert (seen["live"], seen["rolled_back"], seen["newest_for_up"]) == (_version(newer), _version(older), newer.name)
    state, error = seen["listed"]["tiny-locked"]
    assert state == STATE_REFUSED and "manifest.json cannot be read: PermissionError" in error and "Permission denied" in error
    assert {name: state for name, (state, _) in seen["listed"].items()} == {
        older.name: STATE_AVAILABLE, newer.name: STATE_LIVE, "tiny-locked": STATE_REFUSED,
    }
    assert seen["refused_loads"] == 1  # once, not at every poll


def test_a_link_to_nothing_or_a_manifest_that_is_no_file_is_refused_and_the_rest_serves(trained, tmp_path, contract):
    """Each was passed over without a word, though it stands where a version goes (a version linked in from a volume
    that is not mounted): reading one version may fail in any way, and refuses that version only."""
    models = tmp_path / "models"
    models.mkdir()
    good = shutil.copytree(trained[0], models / trained[0].name)
    (models / "tiny-linked").symlink_to(tmp_path / "not-mounted" / "tiny-linked")
    (models / "tiny-looped").symlink_to(models / "tiny-looped")
    (models / "tiny-manifest-is-a-folder" / MANIFEST).mkdir(parents=True)
    (models / "README").write_text("a plain file is no version")
    refused_before = _refused_loads()
    registry = _started(models, contract)
    for _ in range(3):
        assert registry.poll() is None
        assert registry.verify_listed() == []
    listed = {entry.directory.name: (entry.state, entry.error) for entry in registry.list_models()}
    assert listed.pop(good.name) == (STATE_LIVE, "")
    assert {name: state for name, (state, _) in listed.items()} == dict.fromkeys(
        ["tiny-linked", "tiny-looped", "tiny-manifest-is-a-folder"], STATE_REFUSED
    )
    assert "cannot be read: FileNotFoundError" in listed["tiny-linked"][1]
    assert "Too many levels of symbolic links" in listed["tiny-looped"][1]
    assert "cannot be read: IsADirectoryError" in listed["tiny-manifest-is-a-folder"][1]
    assert _refused_loads() - refused_before == 3
    assert resolve_version_dir(models) == good


def _copy_keeping_version(source, models, directory_name: str, created: str):
    """A copy of a version in another directory under the same version name (a backup, a second `cp -r`)."""
    target = shutil.copytree(source, models / directory_name)
    manifest = json.loads((target / MANIFEST).read_text())
    (target / MANIFEST).write_text(json.dumps({**manifest, "created": created}))
    return target


def test_a_newer_copy_under_a_version_name_leaves_the_name_with_the_original(trained, tmp_path, contract):
    """`model load`, `rollback` and `traffic --candidate` met the copy first (the newest under that name) and refused it
    for sharing the name: the original could not be loaded any more."""
    models = tmp_path / "models"
    models.mkdir()
    older, newer = (shutil.copytree(version, models / version.name) for version in trained)
    registry = _started(models, contract)
    registry.load(_version(older))
    copy = _copy_keeping_version(newer, models, "tiny-copy", "2999-01-01T00:00:00+00:00")
    assert registry.poll() is None  # not promoted, though newer than anything seen

    assert registry.set_traffic(_version(newer), 10.0, shadow=False).candidate_version == _version(newer)
    model, previous = registry.load(_version(newer))
    assert (model.version, previous) == (_version(newer), _version(older))
    listed = {entry.directory: entry for entry in registry.list_models()}
    assert listed[newer].state == STATE_LIVE
    assert listed[copy].state == STATE_REFUSED
    assert f"is also the version of {newer}, which keeps that name" in listed[copy].error, listed[copy].error


def test_an_older_copy_of_the_live_version_is_refused_and_never_listed_live(trained, tmp_path, contract):
    """A backup dropped beside the live version was listed as a second live row and never checked; and the live
    version itself was refused for sharing its name with the backup, which blocked rolling back to it."""
    models = tmp_path / "models"
    models.mkdir()
    older, newer = (shutil.copytree(version, models / version.name) for version in trained)
    registry = _started(models, contract)
    refused_before = _refused_loads()
    backup = _copy_keeping_version(newer, models, "tiny-backup", "2000-01-01T00:00:00+00:00")
    for _ in range(3):
        assert registry.poll() is None
        assert registry.verify_listed() == []  # the live version is not refused over the backup
    listed = registry.list_models()
    assert [entry.directory for entry in listed if entry.state == STATE_LIVE] == [newer]
    (refused,) = [entry for entry in listed if entry.directory == backup]
    assert refused.state == STATE_REFUSED and f"is also the version of {newer}" in refused.error, refused.error
    assert _refused_loads() - refused_before == 1

    registry.load(_version(older))
    assert registry.load(_version(newer))[0].version == _version(newer)  # the rollback to it


def test_at_a_restart_a_version_name_found_twice_goes_to_the_directory_named_after_it(trained, tmp_path, contract):
    """Which directory came first cannot be known after a restart. `whisperlite train` names a version's directory
    after its version, so that one keeps the name; when none is named so, none serves it until one is."""
    models = tmp_path / "models"
    models.mkdir()
    older, original = (shutil.copytree(version, models / version.name) for version in trained)
    name = _version(original)
    copy = _copy_keeping_version(original, models, "a-copy", "2999-01-01T00:00:00+00:00")  # newer, and first by name
    registry = ModelRegistry(models)
    assert registry.start(contract).version == name
    states = {entry.directory: entry.state for entry in registry.list_models()}
    assert states == {older: STATE_AVAILABLE, original: STATE_LIVE, copy: STATE_REFUSED}

    renamed = original.rename(models / "b-copy")
    registry = ModelRegistry(models)
    assert registry.start(contract).version == _version(older)
    listed = {entry.directory: (entry.state, entry.error) for entry in registry.list_models()}
    assert listed[copy][0] == listed[renamed][0] == STATE_REFUSED
    assert f"is also the version of {renamed}, and none of these directories is named {name!r}" in listed[copy][1]
    with pytest.raises(FailedPrecondition, match=f"none of these directories is named .*; still serving {_version(older)}"):
        registry.load(name)

    restored = renamed.rename(models / name)  # what the refusal asks for: no restart needed
    assert registry.load(name)[0].version == name
    states = {entry.directory: entry.state for entry in registry.list_models()}
    assert states == {older: STATE_AVAILABLE, restored: STATE_LIVE, copy: STATE_REFUSED}
