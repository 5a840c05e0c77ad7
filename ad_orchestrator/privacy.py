"""Pseudonymise requests at the edge: raw user and device ids never travel on.

`pseudonymise` replaces `user.id` and `device.ifa` by their salted keyed hash
(`ad_orchestrator.logging.hash_id`), marked with a prefix so that hashing is done
once. It runs where a request enters the service (the client helper before anything
is sent, `gather_results` on arrival), so queues, results, the decision stream, the
feedback stream, frequency-cap keys and logs only ever see hashes. The schemas have
no field for IP addresses, so those are dropped at validation.
"""

from __future__ import annotations

from ad_orchestrator.logging import hash_id
from ad_orchestrator.schemas import AdRequest

HASHED_PREFIX = "h:"


def pseudonym(value: str | None, salt: bytes) -> str | None:
    """Return the marked keyed hash of an identifier (unchanged if already one)."""
    if not value or value.startswith(HASHED_PREFIX):
        return value or None
    return HASHED_PREFIX + (hash_id(value, salt) or "")


def pseudonymise(request: AdRequest, salt: bytes) -> AdRequest:
    """Return the request with its user and device ids replaced by pseudonyms."""
    user_id = pseudonym(request.user.id, salt)
    ifa = pseudonym(request.device.ifa, salt)
    if user_id == request.user.id and ifa == request.device.ifa:
        return request
    return request.model_copy(
        update={
            "user": request.user.model_copy(update={"id": user_id}),
            "device": request.device.model_copy(update={"ifa": ifa}),
        }
    )
