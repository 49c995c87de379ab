"""``sentinel://`` URLs: the Sentinels, the database and the credentials every client gets."""

from __future__ import annotations

import pytest

from offload.broker.app import make_app
from offload.broker.connection import broker_url, redis_db, transport_options
from offload.config import Settings
from offload.errors import ConfigError
from tests.conftest import bare_settings

URL = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26380/5"


def settings(url: str, **extra: str) -> Settings:
    return bare_settings(redis_url=url, **extra)


def test_the_database_and_credentials_go_on_every_sentinel() -> None:
    s = settings(URL, redis_user="offload-worker", redis_password="p w")
    assert redis_db(s) == 5
    assert broker_url(s) == (
        "sentinel://offload-worker:p%20w@10.0.0.1:26379/5;"
        "sentinel://offload-worker:p%20w@10.0.0.2:26380/5"
    )


def test_celery_gets_the_master_name() -> None:
    s = settings(URL, redis_sentinel_master="cluster-a")
    assert transport_options(s)["master_name"] == "cluster-a"
    app = make_app(s)
    assert app.conf.broker_transport_options["master_name"] == "cluster-a"
    plain = transport_options(settings("redis://127.0.0.1:6379/0"))
    assert "master_name" not in plain and "sentinel_kwargs" not in plain
    assert plain["socket_keepalive"] is True and plain["socket_timeout"] > 1  # BRPOP: 1 s


@pytest.mark.parametrize(
    "url",
    [
        "sentinel://h1:26379;redis://h2:6379",
        "sentinel://:26379",
        "sentinel://h1/1;sentinel://h2/2",
        "sentinel://h1/x",
    ],
)
def test_a_bad_sentinel_url_names_the_setting(url: str) -> None:
    with pytest.raises(ConfigError, match="OFFLOAD_REDIS_URL"):
        redis_db(settings(url))
