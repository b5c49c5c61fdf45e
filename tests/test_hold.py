"""Locks beyond the contract: waiting acquires, extend_lock and hold()."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
import valkey

from wfe_valkey import LockNotAcquired, ValkeyLockProvider
from wfe_valkey.lock import LeaseState


def lock_key(locks: ValkeyLockProvider, resource: str) -> str:
    return f"{locks.prefix}:lock:{resource}"


async def wait_until_set(event: asyncio.Event, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        await event.wait()


async def test_hold_sets_the_contract_key(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    async with locks.hold("wf-1"):
        assert other_host.get(lock_key(locks, "wf-1")) == locks.token.encode()


async def test_hold_releases_on_exit(locks: ValkeyLockProvider, other_host: valkey.Valkey) -> None:
    async with locks.hold("wf-1"):
        pass

    assert other_host.exists(lock_key(locks, "wf-1")) == 0


async def test_hold_releases_when_block_raises(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    with pytest.raises(KeyError, match="step failed"):
        async with locks.hold("wf-1"):
            raise KeyError("step failed")

    assert other_host.exists(lock_key(locks, "wf-1")) == 0


async def test_hold_renews_past_the_lock_duration(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    locks.with_lock_duration(timedelta(milliseconds=300))

    async with locks.hold("wf-1") as lease:
        await asyncio.sleep(1.0)
        value = other_host.get(lock_key(locks, "wf-1"))
        ttl = other_host.pttl(lock_key(locks, "wf-1"))
        lost = lease.lost.is_set()
        renewals = lease.renewals

    assert value == locks.token.encode()
    assert 0 < ttl <= 300
    assert lost is False
    assert renewals >= 2


async def test_hold_of_held_lock_raises(locks: ValkeyLockProvider) -> None:
    await locks.acquire_lock("wf-1")

    with pytest.raises(LockNotAcquired, match="lock 'wf-1' is held by another holder") as info:
        async with locks.hold("wf-1"):
            pass

    assert info.value.resource == "wf-1"
    assert info.value.wait is None


async def test_hold_with_wait_gets_a_lock_freed_later(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    other_host.set(lock_key(locks, "wf-1"), "rust-host-token", px=200)

    async with locks.hold("wf-1", wait=5.0):
        assert other_host.get(lock_key(locks, "wf-1")) == locks.token.encode()


async def test_hold_with_wait_raises_after_the_wait(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    other_host.set(lock_key(locks, "wf-1"), "rust-host-token", px=30_000)

    with pytest.raises(LockNotAcquired, match=r"after waiting 0\.2 s") as info:
        async with locks.hold("wf-1", wait=0.2):
            pass

    assert info.value.wait == 0.2
    assert other_host.get(lock_key(locks, "wf-1")) == b"rust-host-token"


async def test_lease_lost_when_lock_taken_over(
    locks: ValkeyLockProvider, other_host: valkey.Valkey, caplog: pytest.LogCaptureFixture
) -> None:
    locks.with_lock_duration(timedelta(milliseconds=300))

    with caplog.at_level(logging.WARNING, logger="wfe_valkey.lock"):
        async with locks.hold("wf-1") as lease:
            other_host.set(lock_key(locks, "wf-1"), "rust-host-token", px=30_000)
            await wait_until_set(lease.lost)

    assert other_host.get(lock_key(locks, "wf-1")) == b"rust-host-token"
    messages = [record.getMessage() for record in caplog.records]
    assert "lost lock 'wf-1': it expired or another holder took it" in messages


async def test_lease_lost_when_lock_deleted(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    locks.with_lock_duration(timedelta(milliseconds=300))

    async with locks.hold("wf-1") as lease:
        other_host.delete(lock_key(locks, "wf-1"))
        await wait_until_set(lease.lost)

    assert other_host.exists(lock_key(locks, "wf-1")) == 0


async def test_lease_cannot_be_entered_twice(locks: ValkeyLockProvider) -> None:
    lease = locks.hold("wf-1")
    async with lease:
        with pytest.raises(RuntimeError, match="already entered"):
            await lease.__aenter__()


async def test_extend_resets_the_expiry(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    locks.with_lock_duration(timedelta(seconds=20))
    await locks.acquire_lock("wf-1")
    other_host.pexpire(lock_key(locks, "wf-1"), 1000)

    assert await locks.extend_lock("wf-1") is True

    assert other_host.pttl(lock_key(locks, "wf-1")) > 10_000


async def test_extend_of_unheld_lock_is_false(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    assert await locks.extend_lock("wf-1") is False

    assert other_host.exists(lock_key(locks, "wf-1")) == 0


async def test_extend_keeps_another_holders_expiry(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    other_host.set(lock_key(locks, "wf-1"), "rust-host-token", px=5000)

    assert await locks.extend_lock("wf-1") is False

    assert other_host.pttl(lock_key(locks, "wf-1")) <= 5000
    assert other_host.get(lock_key(locks, "wf-1")) == b"rust-host-token"


async def test_extend_loads_the_script_after_flush(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    await locks.acquire_lock("wf-1")
    other_host.script_flush()

    assert await locks.extend_lock("wf-1") is True


async def test_acquire_with_wait_gets_a_lock_freed_later(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    other_host.set(lock_key(locks, "wf-1"), "rust-host-token", px=150)

    assert await locks.acquire_lock("wf-1", wait=5.0) is True

    assert other_host.get(lock_key(locks, "wf-1")) == locks.token.encode()


async def test_acquire_with_wait_gives_false_while_held(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    other_host.set(lock_key(locks, "wf-1"), "rust-host-token", px=30_000)

    assert await locks.acquire_lock("wf-1", wait=0.1) is False


async def test_acquire_with_zero_wait_tries_once(locks: ValkeyLockProvider) -> None:
    assert await locks.acquire_lock("wf-1", wait=0) is True
    assert await locks.acquire_lock("wf-1", wait=0) is False


async def test_acquire_rejects_negative_wait(locks: ValkeyLockProvider) -> None:
    with pytest.raises(ValueError, match="wait must be 0 or more seconds, got -1"):
        await locks.acquire_lock("wf-1", wait=-1)


async def test_hold_rejects_text_wait(locks: ValkeyLockProvider) -> None:
    with pytest.raises(TypeError, match="wait must be seconds as a number or None, got str"):
        locks.hold("wf-1", wait="5")  # type: ignore[arg-type]


async def test_hold_rejects_empty_resource(locks: ValkeyLockProvider) -> None:
    with pytest.raises(ValueError, match="resource must not be empty"):
        locks.hold("")


async def test_waiting_acquires_take_turns(server_url: str, prefix: str) -> None:
    hosts = [await ValkeyLockProvider.new(server_url, prefix) for _ in range(3)]
    inside = 0
    overlaps = 0
    try:

        async def run(host: ValkeyLockProvider) -> None:
            nonlocal inside, overlaps
            async with host.hold("shared", wait=10.0):
                inside += 1
                overlaps += inside > 1
                await asyncio.sleep(0.05)
                inside -= 1

        await asyncio.gather(*(run(host) for host in hosts))
    finally:
        for host in hosts:
            await host.close()

    assert overlaps == 0
    assert inside == 0


async def test_lease_repr_shows_held_inside_the_block(locks: ValkeyLockProvider) -> None:
    lease = locks.hold("wf-1")

    async with lease:
        inside = repr(lease)

    assert inside == "<LockLease resource='wf-1' held renewals=0>"


async def test_lease_repr_shows_released_after_the_block(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    lease = locks.hold("wf-1")

    async with lease:
        pass

    assert repr(lease) == "<LockLease resource='wf-1' released renewals=0>"
    assert lease.state is LeaseState.RELEASED
    assert other_host.exists(lock_key(locks, "wf-1")) == 0


async def test_lease_repr_shows_lost_after_the_block(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    locks.with_lock_duration(timedelta(milliseconds=300))
    lease = locks.hold("wf-1")

    async with lease:
        other_host.delete(lock_key(locks, "wf-1"))
        await wait_until_set(lease.lost)

    assert repr(lease) == "<LockLease resource='wf-1' lost, released renewals=0>"


async def test_released_lease_cannot_be_entered_again(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    lease = locks.hold("wf-1")
    async with lease:
        pass

    with pytest.raises(RuntimeError, match=r"\(released\); a lease is single-use, call hold"):
        async with lease:
            pass

    assert repr(lease) == "<LockLease resource='wf-1' released renewals=0>"
    assert other_host.exists(lock_key(locks, "wf-1")) == 0


async def test_lease_not_acquired_cannot_be_entered_again(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    other_host.set(lock_key(locks, "wf-1"), "rust-host-token", px=30_000)
    lease = locks.hold("wf-1")
    with pytest.raises(LockNotAcquired):
        async with lease:
            pass
    other_host.delete(lock_key(locks, "wf-1"))

    with pytest.raises(RuntimeError, match=r"\(not acquired\); a lease is single-use"):
        async with lease:
            pass

    assert other_host.exists(lock_key(locks, "wf-1")) == 0
