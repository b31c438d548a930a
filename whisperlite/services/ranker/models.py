"""The ranker's model versions: what is on disk, which one serves, the traffic split and shadow routing.

Plain Python (no gRPC): the directory watcher, ModelAdminService and Recommend all go through
`ModelRegistry`. What serves is one immutable `Traffic` snapshot that a swap replaces whole, so a
request that read it once uses the same versions from its first stage to its last, and a version
is only swapped in after it loaded and passed validation in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from whisperlite.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from whisperlite.core.model_versions import MANIFEST, newest_first_key, read_manifest, version_dirs
from whisperlite.core.personalization import PersonalizationModel
from whisperlite.core.vector_space import require_same_encoder
from whisperlite.services.ranker.metrics import MODEL_LOADS, MODEL_ROLE

log = logging.getLogger("whisperlite.ranker")

STATE_AVAILABLE = "available"
STATE_LIVE = "live"
STATE_CANDIDATE = "candidate"
STATE_REFUSED = "refused"


def user_bucket(user_id: str) -> float:
    """A user's fixed place in [0, 100): the traffic split compares it with the candidate's percent.

    blake2b, not hash(): Python salts str hashes per process, and every replica and restart must
    send a user to the same version.
    """
    digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100.0


@dataclass(frozen=True)
class Route:
    """The versions one request meets: `model` answers (None: text-only), `shadow` scores in the background."""

    model: PersonalizationModel | None
    shadow: PersonalizationModel | None = None


@dataclass(frozen=True)
class Traffic:
    """Who is served by which version; replaced whole on every change."""

    live: PersonalizationModel | None = None
    candidate: PersonalizationModel | None = None
    candidate_percent: float = 0.0
    shadow: bool = False

    @property
    def live_version(self) -> str:
        return self.live.version if self.live is not None else ""

    @property
    def candidate_version(self) -> str:
        return self.candidate.version if self.candidate is not None else ""

    def route(self, user_id: str) -> Route:
        if self.candidate is None or user_bucket(user_id) >= self.candidate_percent:
            return Route(self.live)
        if self.shadow:
            return Route(self.live, shadow=self.candidate)
        return Route(self.candidate)


@dataclass(frozen=True)
class ServingContract:
    """What a version must match to serve: the query encoder's model and dimension, as start-up found them.

    `probe_query` is a real request embedded by that encoder: the smoke scoring runs it through
    a version before the version may answer anyone.
    """

    encoder_name: str
    dimension: int
    probe_query: np.ndarray


@dataclass(frozen=True)
class ModelEntry:
    """One version directory as ListModels reports it."""

    version: str
    directory: Path
    created: str = ""
    encoder: str = ""
    dimension: int = 0
    users: int = 0
    state: str = STATE_AVAILABLE
    error: str = ""


def load_version(directory: Path) -> PersonalizationModel:
    """Loads one version directory; FailedPrecondition saying why when it cannot be read."""
    try:
        return PersonalizationModel.load(directory)
    except Exception as error:  # a broken file can fail in any way (pickle, zip, torch): each one is a refusal
        raise unloadable(directory, error) from None


def unloadable(path, error: Exception) -> FailedPrecondition:
    return FailedPrecondition(f"model {path} cannot be loaded: {type(error).__name__}: {error}")


def validate(model: PersonalizationModel, contract: ServingContract) -> None:
    """Refuses a version the ranker cannot serve correctly (FailedPrecondition naming the mismatch).

    Encoder name and dimension must be the ones the catalog and the query encoder serve, and a
    smoke scoring of a known user (text-only when the table is empty) must give finite numbers,
    which catches weights that load but are NaN.
    """
    require_same_encoder(
        f"model {model.version}'s training vectors", model.encoder_name, "the query encoder serves", contract.encoder_name,
        dimensions=(model.dimension, contract.dimension),
    )
    user = model.user_ids[0] if model.n_users else None
    try:
        personalized = model.personalize(contract.probe_query, user)
        # Ids no sequence part knows: they score its table's mean row, so NaN weights there show too.
        scores = model.score(personalized, np.stack([contract.probe_query, personalized.vector]), item_ids=["probe", "probe"])
    except (ValueError, RuntimeError) as error:
        raise FailedPrecondition(f"model {model.version}: smoke scoring failed: {type(error).__name__}: {error}") from None
    if not (np.isfinite(personalized.vector).all() and np.isfinite(scores).all()):
        who = f"known user {user!r}" if user is not None else "a text-only request"
        raise FailedPrecondition(f"model {model.version}: smoke scoring of {who} gave NaN or inf scores")


@dataclass(frozen=True)
class _Scan:
    """One look at the model folder: each version directory's manifest or why it cannot be read, and each directory
    refused because another directory holds its version name."""

    directories: list[Path]
    manifests: dict[Path, dict]
    unreadable: dict[Path, str]
    duplicates: dict[Path, str]

    def named(self) -> list[Path]:
        """The directories that hold their version name: the only ones loaded, promoted or listed under it."""
        return [d for d in self.directories if d in self.manifests and d not in self.duplicates]


def _holder_among(name: str, directories: list[Path]) -> Path | None:
    """Which of the directories claiming a version name, all found at once (at a restart), holds it.

    Which one came first cannot be known then, and modification times say little (`cp -a` and `rsync -a` keep them).
    `whisperlite train` names a version's directory after its version, and no two directories of one folder share a
    name: so the one named after it holds it, and when none is, none does (serving either might serve the wrong weights)."""
    if len(directories) == 1:
        return directories[0]
    return next((directory for directory in directories if directory.name == name), None)


def _duplicate_reason(directory: Path, name: str, holder: Path | None, claimants: list[Path]) -> str:
    if holder is not None:
        return (
            f"model {directory} cannot be loaded: its version {name!r} is also the version of {holder}, which keeps that "
            "name: give this one another `version` in its manifest.json"
        )
    others = ", ".join(str(other) for other in sorted(claimants) if other != directory)
    return (
        f"model {directory} cannot be loaded: its version {name!r} is also the version of {others}, and none of these "
        f"directories is named {name!r}: rename the one that should serve it so, or give the others another `version`"
    )


def _fingerprint(directory: Path) -> tuple:
    """Changes whenever a file of the version is written: a refused version is retried once it changes."""
    try:
        return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in directory.iterdir() if f.is_file()))
    except OSError:
        return ()


class ModelRegistry:
    """The versions under `model_dir`, the live one, the traffic split; loads in the caller's thread.

    Every method that loads or swaps holds one lock, so the watcher and admin calls never race;
    readers (`traffic`) take no lock: they read one immutable snapshot.
    """

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self._contract: ServingContract | None = None  # known once start-up has met the encoder and catalog
        self._lock = threading.Lock()
        self._traffic: Traffic | None = None
        # directory -> (fingerprint when refused, why): listed as refused until the files change
        self._refused: dict[Path, tuple[tuple, str]] = {}
        # The newest (created, directory name) seen: only a version newer than it is ever promoted by the watcher.
        self._newest_seen: tuple[str, str] | None = None
        # directory -> (reason, fingerprint) of a refusal found by scanning (its manifest does not read, its version
        # name is held by another directory) already logged and counted: reported again once it changes
        self._scan_refusals: dict[Path, tuple[str, tuple]] = {}
        # version name -> the directory that holds it (see _assign_names); its own lock, as listing takes no other
        self._holders: dict[str, Path] = {}
        self._names_lock = threading.Lock()
        # directory -> fingerprint when it last loaded and passed validation: not loaded again until it changes
        self._verified: dict[Path, tuple] = {}

    @property
    def traffic(self) -> Traffic | None:
        """What serves now; None until start-up has loaded the first model (or found none)."""
        return self._traffic

    # ---- start-up and the watcher ------------------------------------------------------------
    def start(self, contract: ServingContract) -> PersonalizationModel | None:
        """Serves the newest version on disk that loads and passes validation, and returns it; None (text-only
        results) when there is no version at all.

        A newer version that fails is skipped, listed as refused and logged at ERROR: one broken copy used to stop
        every restart, and `up` then stopped the whole stack. When versions exist and none serves, start-up stops
        (FailedPrecondition naming each and why): a fresh ranker silently text-only would hide it.
        """
        with self._lock:
            self._contract = contract
            scan = self._scan()
            if not scan.directories:
                log.warning("no trained model: serving text-only results", extra={"model_dir": str(self.model_dir)})
                self._swap(Traffic())
                return None
            keys = {directory: newest_first_key(manifest, directory) for directory, manifest in scan.manifests.items()}
            self._newest_seen = max(keys.values(), default=None)
            refusals = [*scan.unreadable.values(), *scan.duplicates.values()]
            for directory in sorted(scan.named(), key=keys.get, reverse=True):
                try:
                    model = self._load_validated(directory)
                except FailedPrecondition as error:
                    refusals.append(str(error))
                    continue
                self._swap(Traffic(live=model))
                return model
            if scan.directories == [self.model_dir]:  # --model-dir names one version
                raise FailedPrecondition(refusals[0])
            raise FailedPrecondition(f"model {self.model_dir} cannot be loaded: no version under it serves: " + "; ".join(refusals))

    def poll(self) -> str | None:
        """Picks up a version newer than any seen before (by manifest `created`); returns it once live.

        Only a new newest is promoted, so a rollback to an older version is not undone by the next
        poll. A refused version is retried when its files change (e.g. a copy that was still running).
        """
        with self._lock:
            if self._traffic is None:
                return None
            scan = self._scan()
            keyed = [(newest_first_key(scan.manifests[directory], directory), directory) for directory in scan.named()]
            newer = [(key, directory) for key, directory in keyed if self._newest_seen is None or key > self._newest_seen]
            # Newest first; a refused one (until its files change) does not hide a good one written after the last seen.
            for key, directory in sorted(newer, reverse=True):
                refused = self._refused.get(directory)
                if refused is not None and refused[0] == _fingerprint(directory):
                    continue
                try:
                    model = self._load_validated(directory)
                except FailedPrecondition:
                    continue
                self._newest_seen = key
                previous = self._promote(model)
                log.info("picked up a new model version", extra={"model_version": model.version, "previous_version": previous})
                return model.version
            return None

    def verify_listed(self) -> list[str]:
        """Loads and validates, one at a time, each version on disk that has not been tried since its files last
        changed; returns the directories refused.

        Without it a version whose weights do not load was listed as available after a restart (refusals live in
        memory) until a `model load` or rollback met it. A version is dropped from memory once checked.
        """
        refused = []
        scan = self._scan()
        for directory in scan.named():
            fingerprint = _fingerprint(directory)
            with self._lock:
                if self._traffic is None:
                    return refused
                tried = self._refused.get(directory, ((),))[0] == fingerprint or self._verified.get(directory) == fingerprint
                serving = {self._traffic.live_version, self._traffic.candidate_version} - {""}
            if tried or scan.manifests[directory]["version"] in serving:
                continue
            try:
                self._checked(directory)  # loaded outside the lock: requests and admin calls go on meanwhile
            except FailedPrecondition as error:
                with self._lock:
                    self._refuse(directory, fingerprint, error)
                log.error("model version refused", extra={"model_dir": str(directory), "reason": str(error)})
                refused.append(str(directory))
                continue
            with self._lock:
                self._passed(directory, fingerprint)
        return refused

    # ---- admin -------------------------------------------------------------------------------
    def get_traffic(self) -> Traffic:
        return self._started()

    def list_models(self) -> list[ModelEntry]:
        traffic = self._started()
        scan = self._scan()
        entries = [
            ModelEntry(version=directory.name, directory=directory, state=STATE_REFUSED, error=reason)
            for directory, reason in scan.unreadable.items()
        ]
        for directory, manifest in scan.manifests.items():
            version = manifest["version"]
            refused = self._refused.get(directory)
            # A duplicate first: a second directory under the live version's name is refused, not a second live row.
            if directory in scan.duplicates:
                state, error = STATE_REFUSED, scan.duplicates[directory]
            elif refused is not None:
                state, error = STATE_REFUSED, refused[1]
            elif version == traffic.live_version:
                state, error = STATE_LIVE, ""
            elif version == traffic.candidate_version:
                state, error = STATE_CANDIDATE, ""
            else:
                state, error = STATE_AVAILABLE, ""
            entries.append(ModelEntry(
                version=version, directory=directory, created=str(manifest.get("created", "")),
                encoder=str(manifest.get("encoder", "")), dimension=_int(manifest.get("dimension")),
                users=_int(manifest.get("n_users")), state=state, error=error,
            ))
        held_on_disk = {scan.manifests[directory]["version"] for directory in scan.named()}
        for model, state in ((traffic.live, STATE_LIVE), (traffic.candidate, STATE_CANDIDATE)):
            if model is not None and model.version not in held_on_disk:
                # Its directory was removed: it serves from memory until replaced, and rollback still needs to see it.
                manifest = model.manifest
                entries.append(ModelEntry(
                    version=model.version, directory=self.model_dir, created=str(manifest.get("created", "")),
                    encoder=model.encoder_name, dimension=model.dimension, users=model.n_users, state=state,
                    error=f"no longer on disk under {self.model_dir}: serving from memory until replaced",
                ))
        entries.sort(key=lambda e: (e.created, e.directory.name), reverse=True)
        return entries

    def load(self, version: str) -> tuple[PersonalizationModel, str]:
        """Makes `version` live (a rollback when it is older); returns it and the version it replaced.

        The live version serves until this returns, and keeps serving when it raises.
        """
        if not version:
            raise InvalidArgument("version: must name a version on disk (see ListModels)")
        with self._lock:
            traffic = self._started()
            if version == traffic.live_version:
                return traffic.live, traffic.live_version
            model = traffic.candidate if version == traffic.candidate_version else self._load_validated(self._find(version))
            return model, self._promote(model)

    def set_traffic(self, candidate_version: str, candidate_percent: float, shadow: bool) -> Traffic:
        """Sends `candidate_percent` of users (by user-id hash) to the candidate, or shadow-scores it for them."""
        if not 0.0 <= candidate_percent <= 100.0:  # also refuses NaN
            raise InvalidArgument(f"candidate_percent: must be between 0 and 100, got {candidate_percent}")
        with self._lock:
            traffic = self._started()
            if not candidate_version:
                if shadow or candidate_percent:
                    raise InvalidArgument("candidate_version: needed for a percent or shadow mode; leave all empty to end the split")
                self._swap(replace(traffic, candidate=None, candidate_percent=0.0, shadow=False))
                return self._traffic
            if candidate_version == traffic.live_version:
                raise InvalidArgument(f"candidate_version: {candidate_version} is already live")
            candidate = (
                traffic.candidate if candidate_version == traffic.candidate_version
                else self._load_validated(self._find(candidate_version, "candidate_version"))
            )
            _warn_if_users_lost(traffic.live, candidate, "candidate")
            self._swap(replace(traffic, candidate=candidate, candidate_percent=float(candidate_percent), shadow=bool(shadow)))
            log.info("traffic split set", extra={"candidate_version": candidate.version, "candidate_percent": candidate_percent, "shadow": shadow})
            return self._traffic

    # ---- internals (called with the lock held) -----------------------------------------------
    def _started(self) -> Traffic:
        if self._traffic is None:
            raise Unavailable("ranker is starting: its first model is not loaded yet")
        return self._traffic

    def _promote(self, model: PersonalizationModel) -> str:
        traffic = self._traffic
        previous = traffic.live_version
        _warn_if_users_lost(traffic.live, model, "live")
        if model.version == traffic.candidate_version:  # promoting the candidate ends its split
            self._swap(Traffic(live=model))
        else:
            self._swap(replace(traffic, live=model))
        return previous

    def _swap(self, traffic: Traffic) -> None:
        self._traffic = traffic  # one reference assignment: a request sees the old snapshot or the new one
        MODEL_ROLE.clear()
        if traffic.live is not None:
            MODEL_ROLE.labels(traffic.live_version, STATE_LIVE).set(1)
        if traffic.candidate is not None:
            MODEL_ROLE.labels(traffic.candidate_version, "shadow" if traffic.shadow else STATE_CANDIDATE).set(traffic.candidate_percent)

    def _load_validated(self, directory: Path) -> PersonalizationModel:
        fingerprint = _fingerprint(directory)
        try:
            model = self._checked(directory)
        except FailedPrecondition as error:
            self._refuse(directory, fingerprint, error)
            if self._traffic is None:  # start-up: an older version is tried next
                log.error("model version refused at start-up", extra={"model_dir": str(directory), "reason": str(error)})
                raise
            log.error("model version refused", extra={"model_dir": str(directory), "reason": str(error), "still_serving": self._kept()})
            raise self._still_serving(str(error)) from None
        self._passed(directory, fingerprint)
        with self._names_lock:
            # The caller serves it next: its name stays with this directory even if a scan meanwhile saw it gone.
            self._holders[model.version] = directory
        MODEL_LOADS.labels("loaded").inc()
        return model

    def _kept(self) -> str:
        return self._traffic.live_version or "text-only results"

    def _still_serving(self, reason: str) -> FailedPrecondition:
        return FailedPrecondition(f"{reason}; still serving {self._kept()}")

    def _checked(self, directory: Path) -> PersonalizationModel:
        """`directory` loaded and checked fit to serve: FailedPrecondition saying why not."""
        model = load_version(directory)
        validate(model, self._contract)
        return model

    def _refuse(self, directory: Path, fingerprint: tuple, error: FailedPrecondition) -> None:
        self._refused[directory] = (fingerprint, str(error))
        MODEL_LOADS.labels("refused").inc()

    def _passed(self, directory: Path, fingerprint: tuple) -> None:
        self._refused.pop(directory, None)
        self._verified[directory] = fingerprint

    def _find(self, version: str, field: str = "version") -> Path:
        """The directory holding `version`; FailedPrecondition when only refused directories go by that name (their
        version held by another, or a manifest that does not read), NotFound naming the request's `field` when none."""
        scan = self._scan()
        for directory in scan.named():
            if scan.manifests[directory]["version"] == version:
                return directory
        refusals = [reason for directory, reason in scan.duplicates.items() if scan.manifests[directory]["version"] == version]
        refusals += [reason for directory, reason in scan.unreadable.items() if directory.name == version]
        if refusals:
            raise self._still_serving(refusals[0])
        shown = version if len(version) <= 80 else f"{version[:80]}... ({len(version)} characters)"
        raise NotFound(f"{field}: no version {shown!r} under {self.model_dir} (ListModels shows what is there)")

    def _directories(self) -> list[Path]:
        if (self.model_dir / MANIFEST).is_file():  # --model-dir names one version: nothing else to pick from
            return [self.model_dir]
        return version_dirs(self.model_dir) if self.model_dir.is_dir() else []

    def _scan(self) -> _Scan:
        """Reads every version's manifest and decides which directory holds each version name."""
        directories = self._directories()
        manifests, unreadable = {}, {}
        for directory in directories:
            try:
                manifests[directory] = read_manifest(directory)
            except (OSError, ValueError) as error:  # a folder it may not read, a link to nothing: that version only
                unreadable[directory] = f"model {directory}: {MANIFEST} cannot be read: {type(error).__name__}: {error}"
        with self._names_lock:
            duplicates = self._assign_names(manifests, unreadable)
            self._report_once({**unreadable, **duplicates})
        return _Scan(directories, manifests, unreadable, duplicates)

    def _assign_names(self, manifests: dict[Path, dict], unreadable: dict[Path, str]) -> dict[Path, str]:
        """Decides which directory holds each version name; returns each other directory claiming one, with why it is
        refused.

        A name stays with the directory that held it while that directory is there (even while its manifest does not
        read, as in a rewrite), and with a serving version even once its directory is gone: a copy dropped in later,
        older or newer, must neither take the name nor refuse the original. A name met in several directories at once
        (a restart) is decided by `_holder_among`."""
        claims: dict[str, list[Path]] = {}
        for directory, manifest in manifests.items():
            claims.setdefault(manifest["version"], []).append(directory)
        traffic = self._traffic
        serving = {traffic.live_version, traffic.candidate_version} - {""} if traffic is not None else set()
        holders = {name: self._holders[name] for name in serving if name in self._holders}
        duplicates = {}
        for name, claimants in claims.items():
            holder = self._holders.get(name)
            if name not in holders and holder not in claimants and holder not in unreadable:
                holder = _holder_among(name, claimants)
            if holder is not None:
                holders[name] = holder
            for directory in claimants:
                if directory != holder:
                    duplicates[directory] = _duplicate_reason(directory, name, holder, claimants)
        self._holders = holders
        return duplicates

    def _report_once(self, refusals: dict[Path, str]) -> None:
        """Logs and counts each refusal a scan finds once, and again when its reason or its files change."""
        reported = {}
        for directory, reason in refusals.items():
            reported[directory] = (reason, _fingerprint(directory))
            if self._scan_refusals.get(directory) != reported[directory]:
                MODEL_LOADS.labels("refused").inc()
                log.error("model version refused", extra={"model_dir": str(directory), "reason": reason})
        self._scan_refusals = reported


# A version that knows fewer than this share of the users the live one knows was most likely trained on other data (a
# dataset's versions side by side, user ids rewritten by an export): every other shopper gets answers without their
# history, which no check of the version itself can see.
USERS_KEPT_WARNING = 0.5


def _warn_if_users_lost(live: PersonalizationModel | None, model: PersonalizationModel, role: str) -> None:
    if live is None or live.user_ids is model.user_ids or not live.n_users:  # shared index: the same users
        return
    known = sum(model.user_row(user_id) >= 0 for user_id in live.user_ids)
    if known < USERS_KEPT_WARNING * live.n_users:
        log.warning(
            "the new version knows few of the live version's users: the others get answers without their history",
            extra={"version": model.version, "role": role, "live_version": live.version, "live_users_known": known,
                   "live_users": live.n_users, "data_hash": model.manifest.get("data_hash"),
                   "live_data_hash": live.manifest.get("data_hash")},
        )  # fmt: skip


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


async def watch(registry: ModelRegistry, interval_seconds: float) -> None:
    """Checks that every version listed loads, then polls the model directory every `interval_seconds` (0: never)
    until cancelled, checking again after each poll; loading runs in a worker thread."""
    while True:
        try:
            await asyncio.to_thread(registry.verify_listed)
        except Exception:  # a watcher that died silently would stop all future reloads
            log.exception("model version check failed", extra={"model_dir": str(registry.model_dir)})
        if not interval_seconds:
            return
        await asyncio.sleep(interval_seconds)
        try:
            await asyncio.to_thread(registry.poll)
        except Exception:
            log.exception("model directory poll failed", extra={"model_dir": str(registry.model_dir)})
