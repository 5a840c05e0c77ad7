"""Versioned, signed agent weights in Redis, and the hot-swapping model workers serve.

Layout in Redis, for an agent `a` and a version `v` (both under the settings' prefix):

| key | holds |
|---|---|
| `weights:a:v` | the tensors, as safetensors bytes |
| `weights:a:v:meta` | the metadata as canonical JSON (agent, version, data, OPE...) |
| `weights:a:v:hmac` | HMAC-SHA256 (hex) over the bytes and the canonical metadata |
| `weights:a:versions` | sorted set of the stored versions |
| `weights:a:next` | counter handing out versions (`INCR`: trainers never collide) |
| `weights:a:serving` | the version in service |
| `weights:a:history` | the versions that served, newest first (rollback's path) |

Every change of a serving pointer is announced on the channel `weights:events` as
JSON `{"agent", "version", "previous", "ts"}`.

Nothing read from Redis is unpickled: tensors come back through
`safetensors.torch.load`, metadata through `json.loads`, and both are checked against
the HMAC before they are used.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from ad_orchestrator.errors import WeightsError
from ad_orchestrator.metrics import WEIGHTS_VERSION
from ad_orchestrator.redis_server import resolve_redis_url
from ad_orchestrator.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_KEEP = 10
SIGNATURE_FORMAT = "adorch-weights/v1"
_AGENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_RESERVED_AGENT_NAMES = frozenset({"events"})

_LOG_REFUSED = "refused weights for agent=%s version=%s, still serving version=%s: %s"
_LOG_SWAPPED = "now serving weights for agent=%s version=%s (was %s)"
_LOG_POINTER_UNREADABLE = "cannot read the serving pointer of agent=%s: %s"


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One stored version, as `list_versions` reports it.

    Attributes:
        version: The version number (1, 2, ...).
        serving: Whether the serving pointer names this version.
        metadata: The stored metadata; not verified (use `load` for that).
        size_bytes: Size of the safetensors blob, 0 when the blob is missing.
    """

    version: int
    serving: bool
    metadata: dict[str, Any]
    size_bytes: int


def canonical_json(data: Mapping[str, Any]) -> bytes:
    """Return the one byte string that stands for `data` when it is signed."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def sign(key: bytes, blob: bytes, metadata: Mapping[str, Any]) -> str:
    """Return the hex HMAC-SHA256 of a weights blob and its metadata.

    The blob's length goes first, so no split of the same bytes between blob and
    metadata can produce the same message.
    """
    message = b"".join(
        (
            SIGNATURE_FORMAT.encode(),
            b"\n",
            len(blob).to_bytes(8, "big"),
            blob,
            canonical_json(metadata),
        )
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def state_dict_to_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise a state dict as safetensors bytes (copies, so shared storage is ok)."""
    tensors = {
        name: tensor.detach().to("cpu").clone().contiguous()
        for name, tensor in state_dict.items()
    }
    return save_safetensors(tensors)


def _check_agent(agent: str) -> str:
    if not _AGENT_NAME.match(agent) or agent in _RESERVED_AGENT_NAMES:
        raise WeightsError(
            f"agent name must be 1-32 lowercase letters, digits or '_' starting with a "
            f"letter, and not one of {sorted(_RESERVED_AGENT_NAMES)}, but got "
            f"{agent!r}; use the agent's name from the graph, e.g. 'content'"
        )
    return agent


def _check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise WeightsError(
            f"version must be a positive integer, but got {version!r}; "
            "`adorch weights list` shows the stored versions"
        )
    return version


class WeightStore:
    """Store, sign, list, serve and roll back agents' weights in Redis.

    Args:
        redis_client: A client of the Redis that holds the weights. It must return
            bytes (`decode_responses=False`), since blobs are binary.
        settings: Supplies key names (`settings.key`) and the HMAC key
            (`settings.secret("weights_hmac_key")`).
        keep: How many of the newest versions to keep per agent; older ones are
            deleted on publish, except the serving one, which is never deleted.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        settings: Settings,
        *,
        keep: int | None = None,
    ) -> None:
        keep = keep if keep is not None else getattr(settings, "weights_keep", None)
        keep = DEFAULT_KEEP if keep is None else keep
        if keep < 1:
            raise WeightsError(
                f"keep must be at least 1 (the newest version), but got {keep}"
            )
        # redis-py types every reply as "value or awaitable" (its sync and async
        # clients share stubs); this store only ever holds a sync client.
        self.redis: Any = redis_client
        self.settings = settings
        self.keep = keep
        self._hmac_key = settings.secret("weights_hmac_key")

    # Key names -------------------------------------------------------------------

    def blob_key(self, agent: str, version: int) -> str:
        """Return the key of a version's safetensors bytes."""
        return self.settings.key("weights", agent, str(version))

    def _meta_key(self, agent: str, version: int) -> str:
        return self.settings.key("weights", agent, str(version), "meta")

    def _hmac_key_name(self, agent: str, version: int) -> str:
        return self.settings.key("weights", agent, str(version), "hmac")

    def _versions_key(self, agent: str) -> str:
        return self.settings.key("weights", agent, "versions")

    def _serving_key(self, agent: str) -> str:
        return self.settings.key("weights", agent, "serving")

    def _history_key(self, agent: str) -> str:
        return self.settings.key("weights", agent, "history")

    @property
    def events_channel(self) -> str:
        """The pub/sub channel that announces serving changes."""
        return self.settings.key("weights", "events")

    # Writing ---------------------------------------------------------------------

    def publish(
        self,
        agent: str,
        state_dict: Mapping[str, torch.Tensor],
        metadata: Mapping[str, Any],
    ) -> int:
        """Store a new signed version of an agent's weights; it does not serve yet.

        Args:
            agent: The agent's name, e.g. `"content"`.
            state_dict: The network's tensors.
            metadata: JSON-ready facts about the weights; must include
                `input_schema` (the network class's `INPUT_SCHEMA`). `agent`,
                `version` and `created` are filled in here.

        Returns:
            The new version number.

        Raises:
            WeightsError: The agent name is invalid, `input_schema` is missing or
                the metadata is not JSON-ready.
        """
        _check_agent(agent)
        if not isinstance(metadata.get("input_schema"), str):
            raise WeightsError(
                "metadata must name the network's input schema under 'input_schema' "
                f"(a string, the class's INPUT_SCHEMA), but got "
                f"{metadata.get('input_schema')!r}"
            )
        blob = state_dict_to_bytes(state_dict)
        version = int(self.redis.incr(self.settings.key("weights", agent, "next")))
        full = {
            **metadata,
            "agent": agent,
            "version": version,
            "created": time.time(),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        try:
            meta_bytes = canonical_json(full)
        except (TypeError, ValueError) as exc:
            raise WeightsError(
                f"metadata must be JSON-ready (str, numbers, lists, dicts; no NaN), "
                f"but encoding it failed: {exc}"
            ) from exc
        signature = sign(self._hmac_key, blob, full)

        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.blob_key(agent, version), blob)
        pipe.set(self._meta_key(agent, version), meta_bytes)
        pipe.set(self._hmac_key_name(agent, version), signature)
        pipe.zadd(self._versions_key(agent), {str(version): version})
        pipe.execute()
        logger.info(
            "published weights agent=%s version=%s bytes=%d", agent, version, len(blob)
        )
        self.prune(agent)
        return version

    def update_metadata(
        self, agent: str, version: int, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge `changes` into a version's metadata and sign it again.

        The blob is verified first, so a tampered version is never re-signed.

        Returns:
            The new metadata.
        """
        blob, metadata = self._read_verified(agent, version)
        reserved = {"agent", "version", "sha256"} & set(changes)
        if reserved:
            raise WeightsError(
                f"metadata fields {sorted(reserved)} are set by the store and cannot "
                "be changed; pass other fields"
            )
        metadata.update(changes)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._meta_key(agent, version), canonical_json(metadata))
        pipe.set(
            self._hmac_key_name(agent, version), sign(self._hmac_key, blob, metadata)
        )
        pipe.execute()
        return metadata

    def set_serving(self, agent: str, version: int, *, verify: bool = True) -> None:
        """Point an agent's serving pointer at `version` and announce it.

        Args:
            agent: The agent's name.
            version: A stored version.
            verify: Check the version's signature first (workers check it again
                whatever this says; `False` exists for tests that plant a bad blob).

        Raises:
            WeightsError: The version is not stored, or fails its signature.
        """
        _check_agent(agent)
        _check_version(version)
        if verify:
            self._read_verified(agent, version)
        elif not self.redis.exists(self.blob_key(agent, version)):
            raise WeightsError(self._missing_message(agent, version))
        previous = self.serving_version(agent)
        event = {"agent": agent, "version": version, "previous": previous}
        message = json.dumps({**event, "ts": time.time()})
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._serving_key(agent), str(version))
        pipe.lpush(self._history_key(agent), str(version))
        pipe.ltrim(self._history_key(agent), 0, 99)
        pipe.publish(self.events_channel, message)
        pipe.execute()
        logger.info(
            "serving pointer agent=%s version=%s previous=%s", agent, version, previous
        )

    def rollback(self, agent: str, to_version: int | None = None) -> int:
        """Serve an earlier version again and return it.

        Args:
            agent: The agent's name.
            to_version: The version to serve; by default the version that served
                before the current one (skipping versions no longer stored).

        Raises:
            WeightsError: Nothing serves, there is no earlier version, or the
                target is missing or fails its signature.
        """
        current = self.serving_version(agent)
        if to_version is None:
            if current is None:
                raise WeightsError(
                    f"agent {agent!r} serves no version, so there is nothing to roll "
                    "back from; promote one with `adorch weights promote`"
                )
            to_version = self._previous_served(agent, current)
            if to_version is None:
                raise WeightsError(
                    f"agent {agent!r} has no stored version that served before "
                    f"version {current}; name one with `--to` "
                    "(see `adorch weights list`)"
                )
        self.set_serving(agent, to_version)
        logger.warning(
            "rolled back agent=%s from version=%s to version=%s",
            agent,
            current,
            to_version,
        )
        return to_version

    def _previous_served(self, agent: str, current: int) -> int | None:
        stored = set(self._stored_versions(agent))
        history = [int(v) for v in self.redis.lrange(self._history_key(agent), 0, -1)]
        for version in history:
            if version != current and version in stored:
                return version
        earlier = [v for v in stored if v < current]
        return max(earlier) if earlier else None

    def prune(self, agent: str) -> list[int]:
        """Delete all but the newest `keep` versions, never the serving one.

        Returns:
            The versions deleted.
        """
        versions = self._stored_versions(agent)
        serving = self.serving_version(agent)
        doomed = [v for v in versions[: -self.keep] if v != serving]
        if not doomed:
            return []
        pipe = self.redis.pipeline(transaction=True)
        for version in doomed:
            pipe.delete(
                self.blob_key(agent, version),
                self._meta_key(agent, version),
                self._hmac_key_name(agent, version),
            )
            pipe.zrem(self._versions_key(agent), str(version))
        pipe.execute()
        logger.info("pruned weights agent=%s versions=%s", agent, doomed)
        return doomed

    # Reading ---------------------------------------------------------------------

    def serving_version(self, agent: str) -> int | None:
        """Return the version in service, or None when none was ever promoted."""
        raw = self.redis.get(self._serving_key(agent))
        return int(raw) if raw is not None else None

    def _stored_versions(self, agent: str) -> list[int]:
        members = self.redis.zrange(self._versions_key(agent), 0, -1)
        return sorted(int(v) for v in members)

    def list_versions(self, agent: str) -> list[VersionInfo]:
        """Return every stored version of an agent, oldest first (unverified)."""
        _check_agent(agent)
        serving = self.serving_version(agent)
        found = []
        for version in self._stored_versions(agent):
            meta_raw = self.redis.get(self._meta_key(agent, version))
            size = self.redis.strlen(self.blob_key(agent, version))
            try:
                metadata = json.loads(meta_raw) if meta_raw is not None else {}
            except ValueError:
                metadata = {"error": "metadata is not JSON"}
            found.append(VersionInfo(version, version == serving, metadata, int(size)))
        return found

    def metadata(self, agent: str, version: int) -> dict[str, Any]:
        """Return a version's metadata after verifying its signature."""
        return self._read_verified(agent, version)[1]

    def load(
        self, agent: str, version: int, expected_schema: str
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Return a version's tensors and metadata, verified.

        Args:
            agent: The agent's name.
            version: The version to load.
            expected_schema: The serving network's `INPUT_SCHEMA`.

        Raises:
            WeightsError: The version is missing, its HMAC does not match (the
                bytes or the metadata were changed, or another key signed them), it
                was built for another input schema, or its bytes are not
                safetensors.
        """
        blob, metadata = self._read_verified(agent, version)
        schema = metadata.get("input_schema")
        if schema != expected_schema:
            raise WeightsError(
                f"weights for agent {agent!r} version {version} were trained for "
                f"input schema {schema!r}, but the serving network expects "
                f"{expected_schema!r}; retrain with the current features "
                "(`make train`) or roll back to a version that fits"
            )
        try:
            tensors = load_safetensors(blob)
        except (SafetensorError, ValueError) as exc:
            raise WeightsError(
                f"weights for agent {agent!r} version {version} are signed but are "
                f"not valid safetensors bytes ({exc}); republish them"
            ) from exc
        return tensors, metadata

    def _missing_message(self, agent: str, version: int) -> str:
        return (
            f"weights for agent {agent!r} version {version} are missing from Redis "
            f"(key {self.blob_key(agent, version)!r}); `adorch weights list "
            f"--agent {agent}` shows what is stored"
        )

    def _read_verified(self, agent: str, version: int) -> tuple[bytes, dict[str, Any]]:
        _check_agent(agent)
        _check_version(version)
        blob, meta_raw, signature = self.redis.mget(
            [
                self.blob_key(agent, version),
                self._meta_key(agent, version),
                self._hmac_key_name(agent, version),
            ]
        )
        if blob is None or meta_raw is None:
            raise WeightsError(self._missing_message(agent, version))
        if signature is None:
            raise WeightsError(
                f"weights for agent {agent!r} version {version} carry no signature; "
                "unsigned weights are never served, publish them with `WeightStore`"
            )
        try:
            metadata = json.loads(meta_raw)
        except ValueError as exc:
            raise WeightsError(
                f"metadata of agent {agent!r} version {version} is not JSON ({exc})"
            ) from exc
        if not isinstance(metadata, dict):
            raise WeightsError(
                f"metadata of agent {agent!r} version {version} must be a JSON "
                f"object, but got {type(metadata).__name__}"
            )
        expected = sign(self._hmac_key, blob, metadata)
        if not hmac.compare_digest(expected.encode(), bytes(signature)):
            raise WeightsError(
                f"weights for agent {agent!r} version {version} fail their HMAC: the "
                "bytes or the metadata changed after signing, or they were signed "
                "with another `weights_hmac_key`; refusing them"
            )
        if metadata.get("agent") != agent or metadata.get("version") != version:
            raise WeightsError(
                f"weights stored as agent {agent!r} version {version} were signed as "
                f"agent {metadata.get('agent')!r} version {metadata.get('version')!r}"
                "; they were copied between keys, refusing them"
            )
        return bytes(blob), metadata


def open_store(settings: Settings, *, keep: int | None = None) -> WeightStore:
    """Return a store on the Redis the settings resolve to (embedded if need be)."""
    client = redis.Redis.from_url(resolve_redis_url(settings))
    return WeightStore(client, settings, keep=keep)


class ServingModel:
    """The model an agent serves, swapped for a new version between tasks.

    An agent calls `current()` at the start of every task and uses the module it
    gets for the whole task. At most every `check_every_s` (or at once after a
    pub/sub announcement, when `listen` is on) it reads the serving pointer; when it
    names a new version, the weights go into a new module from `factory`, and only
    when that module is complete does the reference change. A task that already
    holds the old module keeps it, so no task ever sees half a model.

    A version that is missing, fails its HMAC or has the wrong input schema is
    refused with an ERROR log (once per version) and the previous version keeps
    serving; before any version loads, the factory's untrained module serves with
    version None.

    Args:
        store: Where the weights are.
        agent: The agent's name, e.g. `"content"`.
        factory: Builds an untrained network; its class's `INPUT_SCHEMA` is the
            schema weights must match.
        check_every_s: Least time between two reads of the serving pointer.
        listen: Subscribe to the store's announcements in a background thread so
            a promotion is picked up at the next task.
        clock: Monotonic time source (tests pass a fake one).
    """

    def __init__(
        self,
        store: WeightStore,
        agent: str,
        factory: Callable[[], nn.Module],
        *,
        check_every_s: float = 0.5,
        listen: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.agent = _check_agent(agent)
        self.factory = factory
        self.check_every_s = check_every_s
        self.listen = listen
        self._clock = clock
        self._lock = threading.Lock()
        self._served: tuple[nn.Module, int | None] | None = None
        self._schema: str | None = None
        self._refused: set[int] = set()
        self._next_check = 0.0
        self._announced = threading.Event()
        self._listener: threading.Thread | None = None

    @property
    def version(self) -> int | None:
        """The version served now (None: untrained, or nothing loaded yet)."""
        return self._served[1] if self._served is not None else None

    def load_now(self) -> tuple[nn.Module, str | None]:
        """Read the pointer and load at once; call it from `worker_process_init`."""
        self._next_check = 0.0
        if self.listen:
            self._start_listener()
        return self.current()

    def current(self) -> tuple[nn.Module, str | None]:
        """Return the module to use for this task and its version as a string."""
        served = self._served
        due = self._clock() >= self._next_check or self._announced.is_set()
        if served is None or due:
            served = self._refresh()
        module, version = served
        return module, (str(version) if version is not None else None)

    def _refresh(self) -> tuple[nn.Module, int | None]:
        with self._lock:
            self._announced.clear()
            self._next_check = self._clock() + self.check_every_s
            if self._served is None:
                self._served = (self._fresh_module(), None)
                WEIGHTS_VERSION.labels(agent=self.agent).set(0)
            try:
                wanted = self.store.serving_version(self.agent)
            except redis.RedisError as exc:
                logger.warning(_LOG_POINTER_UNREADABLE, self.agent, exc)
                return self._served
            if wanted is None or wanted == self._served[1] or wanted in self._refused:
                return self._served
            try:
                module = self._build(wanted)
            except WeightsError as exc:
                self._refused.add(wanted)
                logger.error(_LOG_REFUSED, self.agent, wanted, self._served[1], exc)
                return self._served
            except redis.RedisError as exc:
                logger.warning(_LOG_POINTER_UNREADABLE, self.agent, exc)
                return self._served
            previous = self._served[1]
            self._served = (module, wanted)
            WEIGHTS_VERSION.labels(agent=self.agent).set(wanted)
            logger.info(_LOG_SWAPPED, self.agent, wanted, previous)
            return self._served

    def _fresh_module(self) -> nn.Module:
        module = self.factory()
        module.eval()
        if self._schema is None:
            self._schema = str(getattr(type(module), "INPUT_SCHEMA", ""))
            if not self._schema:
                raise WeightsError(
                    f"the network for agent {self.agent!r} "
                    f"({type(module).__name__}) declares no INPUT_SCHEMA; add one so "
                    "weights can be checked against it"
                )
        return module

    def _build(self, version: int) -> nn.Module:
        module = self._fresh_module()
        tensors, _ = self.store.load(self.agent, version, self._schema or "")
        try:
            module.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise WeightsError(
                f"weights for agent {self.agent!r} version {version} do not fit "
                f"{type(module).__name__}: {exc}"
            ) from exc
        module.eval()
        return module

    def _start_listener(self) -> None:
        if self._listener is not None and self._listener.is_alive():
            return
        self._listener = threading.Thread(
            target=self._listen_loop,
            name=f"weights-listener-{self.agent}",
            daemon=True,
        )
        self._listener.start()

    def _listen_loop(self) -> None:
        # The poll in `current()` is the guarantee; this only shortens the wait, so
        # any error here just ends the thread quietly after a log line.
        try:
            pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.store.events_channel)
            for message in pubsub.listen():
                try:
                    event = json.loads(message["data"])
                except (TypeError, ValueError):
                    continue
                if isinstance(event, dict) and event.get("agent") == self.agent:
                    self._announced.set()
        except redis.RedisError as exc:
            logger.warning("weights listener of agent=%s stopped: %s", self.agent, exc)
