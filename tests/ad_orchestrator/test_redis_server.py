"""With no Redis configured and none answering, an embedded one is started."""

from __future__ import annotations

from pathlib import Path

import redis

from ad_orchestrator.redis_server import resolve_redis_url, stop_embedded, to_celery_url
from ad_orchestrator.settings import Settings


def test_the_embedded_redis_starts_and_stops(tmp_path: Path) -> None:
    """Nothing at the default URL: the bundled server answers on a socket."""
    settings = Settings(
        redis_url=None,
        default_redis_url="redis://127.0.0.1:1/0",
        state_dir=tmp_path,
    )

    url = resolve_redis_url(settings)
    try:
        assert url.startswith("unix://")
        assert redis.Redis.from_url(url).ping()
        assert resolve_redis_url(settings) == url  # found again, not restarted
    finally:
        assert stop_embedded(settings)
    assert not stop_embedded(settings)


def test_a_configured_url_is_used_as_is(tmp_path: Path) -> None:
    """ADORCH_REDIS_URL wins without probing."""
    settings = Settings(redis_url="redis://10.0.0.1:6379/3", state_dir=tmp_path)

    assert resolve_redis_url(settings) == "redis://10.0.0.1:6379/3"


def test_celery_spells_sockets_its_own_way() -> None:
    """redis-py's unix:// becomes kombu's redis+socket://."""
    assert to_celery_url("unix:///x/r.sock?db=0") == "redis+socket:///x/r.sock?db=0"
    assert to_celery_url("redis://h:1/2") == "redis://h:1/2"
