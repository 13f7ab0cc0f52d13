"""The end-to-end tests again, with the broker on a PostgreSQL store (a fresh schema per
test): real broker, real workers, real sockets, the database as the truth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.broker.config import BrokerConfig
from tests.broker.test_end_to_end import *  # noqa: F403  (the tests, collected again here)
from tests.postgres import fresh_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def broker_config(home: Path) -> Iterator[BrokerConfig]:
    with fresh_schema() as url:
        yield BrokerConfig(port=0, store_url=url, home=home)
