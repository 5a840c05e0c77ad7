"""The one typed settings object of the service.

Settings are read once, at an entry point (worker start, CLI, web app), from the
environment (prefix `ADORCH_`) with `config/defaults.env` underneath, and then passed
down. Library code never reads `os.environ` itself.
"""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"
DATA_DIR = REPO_ROOT / "data"


class Settings(BaseSettings):
    """Everything an operator can set, with defaults that run on a bare machine."""

    model_config = SettingsConfigDict(
        env_prefix="ADORCH_",
        env_file=str(CONFIG_DIR / "defaults.env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # Connections ----------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="Redis for results, ledgers and weights; unset: probe, else embed.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Separate broker (for example amqp://guest@127.0.0.1//); "
        "unset: the Redis above.",
    )
    redis_mode: Literal["auto", "external", "embedded"] = Field(
        default="auto",
        description="auto: use redis_url or the default if it answers, else embed.",
    )
    default_redis_url: str = "redis://127.0.0.1:6379/0"
    state_dir: Path = Field(
        default=REPO_ROOT / ".adorch",
        description="Where the embedded Redis and local secrets live.",
    )

    # Celery ---------------------------------------------------------------------------
    queue: str = Field(default="adorch", description="Queue every agent task uses.")
    result_expires_s: int = Field(default=3600, gt=0)
    worker_concurrency: int = Field(default=2, gt=0)
    agent_retries: int = Field(default=2, ge=0, le=10)
    agent_retry_backoff_s: float = Field(default=0.01, ge=0)
    chaos_fail_agents: list[str] = Field(
        default_factory=list,
        description="Chaos testing: these agents raise on every batch, so their "
        "fallbacks can be exercised on real workers. Never set in production.",
    )

    # Decisions ------------------------------------------------------------------------
    deadline_ms: int = Field(
        default=300, gt=0, description="Deadline used when a request has no tmax."
    )
    epsilon: float = Field(default=0.05, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, description="Seed exploration (tests).")
    house_ad_id: str | None = Field(
        default=None, description="Ad served when the deadline passes; unset: no-bid."
    )
    reservation_window_s: int = Field(default=300, gt=0)

    # Creative understanding (defaults in ad_orchestrator.creatives.CreativeConfig)
    creative_fetch_timeout_s: float | None = None
    creative_fetch_max_bytes: int | None = None
    creative_fetch_allow_private: bool | None = Field(
        default=None, description="Let landing pages on private addresses load."
    )
    creative_fetch_workers: int | None = None
    creative_fetch_wait_s: float | None = None
    creative_cache_ttl_s: int | None = None
    creative_error_ttl_s: int | None = None
    creative_pending_ttl_s: int | None = None
    creative_top_k: int | None = None
    creative_topic_min_score: float | None = None
    creative_safety_min_score: float | None = None
    creative_max_text_chars: int | None = None
    creative_preload: bool = Field(
        default=True,
        description="Load the sentence model in the background when a worker "
        "starts, so the first text creative does not wait seconds for it.",
    )

    # Learning loop (defaults in ad_orchestrator.weights, rl.promote, tasks.retrain)
    weights_keep: int | None = Field(default=None, description="Versions kept.")
    promote_tolerance: float | None = Field(
        default=None, description="Relative shortfall the promotion gate accepts."
    )
    retrain_every_s: float | None = None
    retrain_min_new: int | None = None
    retrain_min_clicks: int | None = None
    retrain_max_rows: int | None = None
    retrain_min_age_s: float | None = None
    retrain_steps: int | None = None

    # Files ----------------------------------------------------------------------------
    graph_path: Path = CONFIG_DIR / "agent_graph.yaml"
    campaigns_path: Path = CONFIG_DIR / "campaigns.yaml"
    policies_dir: Path = REPO_ROOT / "policies"
    data_dir: Path = DATA_DIR

    # Keys and names in Redis ----------------------------------------------------------
    key_prefix: str = "adorch"
    feedback_stream: str = "adorch:feedback"
    feedback_maxlen: int = Field(default=1_000_000, gt=0)

    # Secrets --------------------------------------------------------------------------
    weights_hmac_key: SecretStr | None = None
    id_salt: SecretStr | None = None
    flower_user: str = "admin"
    flower_password: SecretStr | None = None

    # Observability --------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True
    metrics_port: int | None = Field(
        default=None, description="Workers serve /metrics here when set."
    )

    @field_validator("key_prefix")
    @classmethod
    def _no_colon_at_end(cls, value: str) -> str:
        if not value or value.endswith(":"):
            raise ValueError("must be a non-empty name without a trailing ':'")
        return value

    def key(self, *parts: str) -> str:
        """Return a Redis key under this deployment's prefix."""
        return ":".join((self.key_prefix, *parts))

    def secret(self, name: Literal["weights_hmac_key", "id_salt"]) -> bytes:
        """Return a secret from settings, or a per-machine one kept in `state_dir`.

        With nothing configured, a random secret is made once and kept (mode 0600)
        under `state_dir`, so a development machine works and stays stable across
        restarts. Production sets `ADORCH_WEIGHTS_HMAC_KEY` and `ADORCH_ID_SALT`.
        """
        configured: SecretStr | None = getattr(self, name)
        if configured is not None:
            return configured.get_secret_value().encode()
        return self._local_secrets[name]

    @cached_property
    def _local_secrets(self) -> dict[str, bytes]:
        folder = self.state_dir / "secrets"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        found = {}
        for name in ("weights_hmac_key", "id_salt"):
            path = folder / name
            if not path.exists():
                path.touch(mode=0o600)
                path.write_text(secrets.token_hex(32))
            found[name] = path.read_text().strip().encode()
        return found


def load_settings(**overrides: object) -> Settings:
    """Build the settings at an entry point; keyword overrides win over the env."""
    return Settings(**overrides)  # type: ignore[arg-type]
