"""The wire format: msgpack, with our pydantic schemas carried as tagged values.

Celery serialises task arguments and results with the codec registered here. Plain
data goes as msgpack; a `Decision` (or any model in `_MODELS`) travels as a msgpack
extension holding its JSON form and its name, and is validated back into the model on
arrival, so `gather_results.delay(request).get()` hands the caller a `Decision`.
Only the listed models can be rebuilt: nothing arbitrary is ever instantiated, and
nothing is pickled.
"""

from __future__ import annotations

from typing import Any

import msgpack
from kombu.serialization import register
from pydantic import BaseModel

from ad_orchestrator.schemas import AdRequest, Decision, FeedbackEvent

CONTENT_TYPE = "application/x-adorch-msgpack"
SERIALIZER = "adorch-msgpack"
_MODEL_EXT = 42
_MODELS: dict[str, type[BaseModel]] = {
    model.__name__: model for model in (Decision, AdRequest, FeedbackEvent)
}


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel) and type(value).__name__ in _MODELS:
        body = msgpack.packb(
            [type(value).__name__, value.model_dump(mode="json")], use_bin_type=True
        )
        return msgpack.ExtType(_MODEL_EXT, body)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot put {type(value).__name__} on the wire")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _MODEL_EXT:
        raise ValueError(f"unknown msgpack extension type {code}")
    name, body = msgpack.unpackb(data, raw=False)
    model = _MODELS.get(name)
    if model is None:
        raise ValueError(f"model {name!r} is not allowed on the wire")
    return model.model_validate(body)


def dumps(value: Any) -> bytes:
    """Encode a message body."""
    return msgpack.packb(value, default=_default, use_bin_type=True)


def loads(data: bytes | str) -> Any:
    """Decode a message body."""
    if isinstance(data, str):
        data = data.encode("latin-1")
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


register(SERIALIZER, dumps, loads, content_type=CONTENT_TYPE, content_encoding="binary")
