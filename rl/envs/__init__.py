"""Environments built from logs: the Open Bandit Dataset as a replay bandit."""

from rl.envs.obd import (
    BanditLog,
    BanditReplayEnv,
    load_obd,
    row_to_request,
    train_test_split,
)

__all__ = [
    "BanditLog",
    "BanditReplayEnv",
    "load_obd",
    "row_to_request",
    "train_test_split",
]
