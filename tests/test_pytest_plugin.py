"""The pytest plugin, as a user's own pytest-asyncio suite uses it: a sample project run as a subprocess."""

from __future__ import annotations

from pathlib import Path

from .helpers import run_user_suite

SAMPLE = """
import pytest

from distlock_async import NotObtainedError, RedisLocker, from_url


@pytest.mark.asyncio
async def test_memory_locker(distlock_memory_locker):
    async with distlock_memory_locker.lock("invoice:1") as lock:
        assert lock.fencing_token > 0


@pytest.mark.asyncio
async def test_redis_locker_excludes_another_client(distlock_redis_locker, distlock_redis_server):
    held = await distlock_redis_locker.obtain("job")
    async with RedisLocker.from_url(distlock_redis_server.url, namespace=distlock_redis_locker.namespace) as other:
        with pytest.raises(NotObtainedError):
            await other.obtain("job", max_retries=0)
    await held.release()


@pytest.mark.asyncio
async def test_etcd_locker(distlock_etcd_locker, distlock_etcd_server):
    async with distlock_etcd_locker.lock("job") as lock:
        assert lock.fencing_token > 0
    async with from_url(distlock_etcd_server.url) as other:
        await (await other.obtain("elsewhere")).release()


@pytest.mark.asyncio
async def test_each_test_gets_its_own_namespace(distlock_redis_locker):
    await (await distlock_redis_locker.obtain("job", max_retries=0)).release()
"""


def test_a_pytest_asyncio_suite_uses_the_fixtures(tmp_path: Path) -> None:
    run_user_suite(tmp_path, "test_sample.py", SAMPLE)
