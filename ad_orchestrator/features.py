"""Fixed-width feature encodings shared by the serving agents and the trainer.

The trainer and the workers must turn the same request into the same numbers, so the
encodings live here and nowhere else. Categorical values are hashed (CRC-32, stable
across processes, unlike `hash()`) into a fixed number of buckets; numeric values are
used as they are.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEVICE_CLASSES = ("desktop", "mobile", "tablet", "ctv", "other", "unknown")
N_POSITIONS = 4
COUNTRY_BUCKETS = 8
USER_BUCKETS = 42
CONTEXT_DIM = 4 + len(DEVICE_CLASSES) + N_POSITIONS + COUNTRY_BUCKETS + USER_BUCKETS
AD_NUMERIC = 4
AD_BUCKETS = 27
AD_DIM = AD_NUMERIC + AD_BUCKETS + 1  # + the user's affinity for this ad

# OpenRTB 2.6 devicetype (list 7.21) to our coarse device classes.
OPENRTB_DEVICE_TYPE = {
    1: "mobile",
    2: "desktop",
    3: "ctv",
    4: "mobile",
    5: "tablet",
    6: "other",
    7: "ctv",
    8: "other",
}


def bucket(name: str, value: object, n_buckets: int) -> int:
    """Return the stable bucket of a `name=value` pair among `n_buckets`."""
    return zlib.crc32(f"{name}={value}".encode()) % n_buckets


@dataclass(frozen=True, slots=True)
class ContextFields:
    """The readable context of one request, before encoding."""

    hour: int
    weekday: int
    device_class: str
    country: str | None
    position: int
    user_features: Mapping[str, str | float]


def encode_context(fields: Sequence[ContextFields]) -> np.ndarray:
    """Encode request contexts into a `(batch, CONTEXT_DIM)` float32 array."""
    out = np.zeros((len(fields), CONTEXT_DIM), dtype=np.float32)
    device_at = 4
    position_at = device_at + len(DEVICE_CLASSES)
    country_at = position_at + N_POSITIONS
    user_at = country_at + COUNTRY_BUCKETS
    for row, item in enumerate(fields):
        angle_h = 2 * math.pi * item.hour / 24
        angle_d = 2 * math.pi * item.weekday / 7
        out[row, 0:4] = (
            math.sin(angle_h),
            math.cos(angle_h),
            math.sin(angle_d),
            math.cos(angle_d),
        )
        device = item.device_class if item.device_class in DEVICE_CLASSES else "other"
        out[row, device_at + DEVICE_CLASSES.index(device)] = 1.0
        out[row, position_at + min(max(item.position, 0), N_POSITIONS - 1)] = 1.0
        if item.country:
            out[row, country_at + bucket("country", item.country, COUNTRY_BUCKETS)] = 1
        for name, value in item.user_features.items():
            if isinstance(value, str):
                out[row, user_at + bucket(name, value, USER_BUCKETS)] += 1.0
            else:
                out[row, user_at + bucket(name, "", USER_BUCKETS)] += float(value)
    return out


def encode_ads(
    ad_features: Sequence[Mapping[str, str | float]],
    affinities: Sequence[float] | None = None,
) -> np.ndarray:
    """Encode ads' own features into an `(n_ads, AD_DIM)` float32 array.

    Numeric features fill the first `AD_NUMERIC` columns in sorted-name order;
    categorical ones are hashed into `AD_BUCKETS` columns; the last column holds the
    user's affinity for the ad (0 when unknown).
    """
    out = np.zeros((len(ad_features), AD_DIM), dtype=np.float32)
    for row, features in enumerate(ad_features):
        numeric = 0
        for name in sorted(features):
            value = features[name]
            if isinstance(value, str):
                out[row, AD_NUMERIC + bucket(name, value, AD_BUCKETS)] = 1.0
            elif numeric < AD_NUMERIC:
                out[row, numeric] = float(value)
                numeric += 1
    if affinities is not None:
        out[:, -1] = np.asarray(affinities, dtype=np.float32)
    return out
