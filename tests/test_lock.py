"""The lock provider: the Rust crate's cases, key layout and expiry."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import valkey

from wfe_valkey import DistributedLockProvider, ValkeyLockProvider


async def test_acquire_succeeds(locks: ValkeyLockProvider) -> None:
    assert await locks.acquire_lock("wf-1") is True


async def test_second_acquire_of_held_resource_fails(locks: ValkeyLockProvider) -> None:
    await locks.acquire_lock("wf-1")

    assert await locks.acquire_lock("wf-1") is False


async def test_release_then_reacquire_succeeds(locks: ValkeyLockProvider) -> None:
    await locks.acquire_lock("wf-1")
    await locks.release_lock("wf-1")

    assert await locks.acquire_lock("wf-1") is True


async def test_release_of_never_acquired_resource_is_fine(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    await locks.release_lock("never-acquired")

    assert other_host.exists(f"{locks.prefix}:lock:never-acquired") == 0


async def test_two_resources_are_independent(locks: ValkeyLockProvider) -> None:
    assert await locks.acquire_lock("wf-a") is True
    assert await locks.acquire_lock("wf-b") is True
    await locks.release_lock("wf-a")
    assert await locks.acquire_lock("wf-b") is False


async def test_start_and_stop_twice_each(locks: ValkeyLockProvider) -> None:
    await locks.start()
    await locks.start()
    await locks.stop()
    await locks.stop()
    await locks.start()

    assert await locks.acquire_lock("after-restart") is True


async def test_five_rounds_then_held(locks: ValkeyLockProvider) -> None:
    for _ in range(5):
        assert await locks.acquire_lock("wf-1") is True
        await locks.release_lock("wf-1")

    assert await locks.acquire_lock("wf-1") is True
    assert await locks.acquire_lock("wf-1") is False


async def test_lock_key_holds_provider_token(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    await locks.acquire_lock("wf-1")

    assert other_host.get(f"{locks.prefix}:lock:wf-1") == locks.token.encode()
    assert other_host.type(f"{locks.prefix}:lock:wf-1") == b"string"


async def test_default_lock_duration_is_thirty_seconds(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    await locks.acquire_lock("wf-1")

    ttl = other_host.pttl(f"{locks.prefix}:lock:wf-1")
    assert 29_000 < ttl <= 30_000
    assert locks.lock_duration == timedelta(seconds=30)


async def test_subsecond_duration_is_sent_in_milliseconds(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    assert locks.with_lock_duration(timedelta(milliseconds=250)) is locks
    await locks.acquire_lock("wf-1")

    ttl = other_host.pttl(f"{locks.prefix}:lock:wf-1")
    assert 0 < ttl <= 250


async def test_duration_in_float_seconds(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    locks.with_lock_duration(1.5)
    await locks.acquire_lock("wf-1")

    assert 1_000 < other_host.pttl(f"{locks.prefix}:lock:wf-1") <= 1_500
    assert locks.lock_duration == timedelta(milliseconds=1500)


async def test_expired_lock_can_be_acquired_again(locks: ValkeyLockProvider) -> None:
    locks.with_lock_duration(0.05)
    await locks.acquire_lock("wf-1")
    await asyncio.sleep(0.1)

    assert await locks.acquire_lock("wf-1") is True


async def test_release_leaves_other_holders_lock(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    async with (
        await ValkeyLockProvider.new(server_url, prefix) as first,
        await ValkeyLockProvider.new(server_url, prefix) as second,
    ):
        assert first.token != second.token
        assert await first.acquire_lock("wf-1") is True
        assert await second.acquire_lock("wf-1") is False

        await second.release_lock("wf-1")

        assert other_host.get(f"{prefix}:lock:wf-1") == first.token.encode()


async def test_lock_held_by_rust_host_is_respected(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    key = f"{locks.prefix}:lock:wf-1"
    other_host.set(key, "4b1c0e53-6c1e-4f0e-9a63-7e4c1d2b9f00", nx=True, px=30_000)

    assert await locks.acquire_lock("wf-1") is False
    await locks.release_lock("wf-1")
    assert other_host.get(key) == b"4b1c0e53-6c1e-4f0e-9a63-7e4c1d2b9f00"


async def test_release_works_after_script_flush(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    await locks.acquire_lock("wf-1")
    other_host.script_flush()

    await locks.release_lock("wf-1")

    assert other_host.exists(f"{locks.prefix}:lock:wf-1") == 0


async def test_provider_satisfies_the_protocol(locks: ValkeyLockProvider) -> None:
    assert isinstance(locks, DistributedLockProvider)
