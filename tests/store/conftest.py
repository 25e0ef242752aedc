from __future__ import annotations

import fakeredis
import pytest

from adjustments.config import Durability
from adjustments.store import RecordStore

RETENTION_S = 3600


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def store(client: fakeredis.FakeRedis) -> RecordStore:
    return RecordStore(client, prefix="t", retention_s=RETENTION_S, durability=Durability("memory"))
