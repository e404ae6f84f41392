"""KVCacheManager: block ids, ref counts, prefix cache, eviction, session pins."""

from __future__ import annotations

import pytest

from server.engine.kv_manager import KVCacheManager, KVUsage, hash_block


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_kv(num_blocks: int = 9, **kwargs: object) -> KVCacheManager:
    return KVCacheManager(num_blocks=num_blocks, block_size=4, **kwargs)  # type: ignore[arg-type]


def computed(kv: KVCacheManager, token_ids: list[int]) -> list[int]:
    """Allocate blocks for token_ids as a fresh sequence and mark all their KV computed."""
    block_ids = kv.allocate(kv.blocks_for(len(token_ids)))
    assert block_ids is not None
    kv.cache_computed_blocks(
        block_ids, token_ids, num_computed_tokens=len(token_ids), block_hashes=[]
    )
    return block_ids


def assert_partition(usage: KVUsage) -> None:
    total = (
        usage.num_free
        + usage.num_cached_evictable
        + usage.num_used_by_running
        + usage.num_pinned_by_sessions
    )
    assert total == usage.num_blocks


def test_null_block_is_never_handed_out() -> None:
    kv = make_kv(num_blocks=9)
    assert kv.num_usable_blocks == 8
    block_ids = kv.allocate(8)
    assert block_ids is not None
    assert sorted(block_ids) == list(range(1, 9))
    assert kv.allocate(1) is None
    kv.free(block_ids)
    assert kv.usage().num_free == 8


def test_allocate_failure_changes_nothing() -> None:
    kv = make_kv(num_blocks=5)
    cached = computed(kv, list(range(8)))  # 2 blocks
    kv.free(cached)
    before = kv.usage()
    assert kv.allocate(3, cached_block_ids=cached) is None  # 2 free, the 2 cached excluded
    assert kv.usage() == before
    assert kv.find_cached_prefix([*range(8), 99]) == (cached, 8)


def test_double_free_raises() -> None:
    kv = make_kv()
    block_ids = kv.allocate(1)
    assert block_ids is not None
    kv.free(block_ids)
    with pytest.raises(ValueError):
        kv.free(block_ids)


def test_prefix_lookup_never_covers_the_last_token() -> None:
    kv = make_kv()
    tokens = list(range(12))
    block_ids = computed(kv, tokens)
    assert kv.find_cached_prefix(tokens) == (block_ids[:2], 8)
    assert kv.find_cached_prefix(tokens[:9]) == (block_ids[:2], 8)
    assert kv.find_cached_prefix(tokens[:8]) == (block_ids[:1], 4)
    assert kv.find_cached_prefix(tokens[:4]) == ([], 0)
    assert kv.find_cached_prefix([*tokens, 50, 51]) == (block_ids, 12)


def test_prefix_is_a_chain_not_a_bag_of_blocks() -> None:
    kv = make_kv()
    computed(kv, [1, 2, 3, 4, 5, 6, 7, 8])
    assert kv.find_cached_prefix([9, 9, 9, 9, 5, 6, 7, 8, 0]) == ([], 0)
    assert hash_block(b"", [5, 6, 7, 8]) != hash_block(hash_block(b"", [1, 2, 3, 4]), [5, 6, 7, 8])


def test_only_computed_full_blocks_are_registered() -> None:
    kv = make_kv()
    tokens = list(range(10))
    block_ids = kv.allocate(3)
    assert block_ids is not None
    hashes = kv.cache_computed_blocks(block_ids, tokens, num_computed_tokens=7, block_hashes=[])
    assert len(hashes) == 1
    assert kv.find_cached_prefix(tokens) == (block_ids[:1], 4)
    hashes += kv.cache_computed_blocks(
        block_ids, tokens, num_computed_tokens=10, block_hashes=hashes
    )
    assert len(hashes) == 2  # the third block holds 2 of 4 tokens: not full
    assert kv.find_cached_prefix(tokens) == (block_ids[:2], 8)


def test_shared_blocks_are_ref_counted() -> None:
    kv = make_kv()
    tokens = list(range(9))
    first = computed(kv, tokens)
    cached, num_cached = kv.find_cached_prefix(tokens)
    assert num_cached == 8
    second = kv.allocate(1, cached_block_ids=cached)
    assert second is not None
    assert second[:2] == first[:2]
    assert kv.num_prefix_hit_tokens_total == 8
    kv.free(first)
    usage = kv.usage()
    assert usage.num_used_by_running == 3  # two shared + second's own
    assert usage.num_free == 5  # first's unregistered third block went straight back
    kv.free(second)
    usage = kv.usage()
    assert usage.num_used_by_running == 0
    assert usage.num_cached_evictable == 2
    assert usage.usage_fraction == 0.0
    assert_partition(usage)


def test_duplicate_content_is_not_registered_twice() -> None:
    kv = make_kv()
    tokens = list(range(4))
    first = computed(kv, tokens)
    second = computed(kv, tokens)
    kv.free(second)
    assert kv.usage().num_free == 7  # second's copy was never registered
    assert kv.find_cached_prefix([*tokens, 9]) == (first, 4)


def test_eviction_is_lru_and_tail_first() -> None:
    kv = make_kv(num_blocks=7)  # 6 usable
    old = computed(kv, list(range(12)))  # 3 blocks
    new = computed(kv, list(range(100, 112)))
    kv.free(old)
    kv.free(new)
    assert kv.usage().num_cached_evictable == 6
    got = kv.allocate(1)
    assert got == [old[2]]  # oldest sequence, its tail block first
    assert kv.num_evictions_total == 1
    assert kv.find_cached_prefix(list(range(13))) == (old[:2], 8)
    assert kv.find_cached_prefix(list(range(100, 113))) == (new, 12)


def test_allocate_does_not_evict_the_prefix_it_is_taking() -> None:
    kv = make_kv(num_blocks=4)  # 3 usable
    tokens = list(range(8))
    kv.free(computed(kv, tokens))
    cached, _ = kv.find_cached_prefix([*tokens, 1])
    got = kv.allocate(1, cached_block_ids=cached)
    assert got is not None
    assert got[:2] == cached
    assert kv.num_evictions_total == 0


def test_session_pin_survives_eviction_pressure() -> None:
    kv = make_kv(num_blocks=9)
    tokens = list(range(8))
    block_ids = computed(kv, tokens)
    kv.pin_session("s", block_ids, 8)
    kv.free(block_ids)
    assert kv.session_num_tokens("s") == 8
    assert kv.usage().num_pinned_by_sessions == 2
    other = kv.allocate(6)  # every block that is not pinned
    assert other is not None
    assert kv.find_cached_prefix([*tokens, 1]) == (block_ids, 8)
    kv.free(other)


def test_pin_replaces_the_old_pin() -> None:
    kv = make_kv()
    first = computed(kv, list(range(4)))
    kv.pin_session("s", first, 4)
    kv.free(first)
    second = computed(kv, list(range(100, 108)))
    kv.pin_session("s", second, 8)
    kv.free(second)
    usage = kv.usage()
    assert usage.num_pinned_by_sessions == 2
    assert usage.num_cached_evictable == 1


def test_pin_refuses_free_blocks() -> None:
    kv = make_kv()
    with pytest.raises(ValueError):
        kv.pin_session("s", [1], 4)
    block_ids = kv.allocate(1)
    assert block_ids is not None
    with pytest.raises(ValueError):
        kv.pin_session("s", block_ids, 9)


def test_idle_sessions_expire_after_ttl() -> None:
    clock = FakeClock()
    kv = make_kv(session_ttl_s=10.0, clock=clock)
    for name in ("a", "b"):
        block_ids = computed(kv, [ord(name)] * 4)
        kv.pin_session(name, block_ids, 4)
        kv.free(block_ids)
        clock.now += 6.0
    assert kv.expire_sessions() == 1  # a is 12 s idle, b 6 s
    assert kv.session_num_tokens("a") is None
    assert kv.session_num_tokens("b") == 4
    usage = kv.usage()
    assert usage.num_pinned_by_sessions == 1
    assert usage.num_cached_evictable == 1  # a's block is still findable until evicted


def test_session_share_releases_lru_sessions() -> None:
    kv = make_kv(num_blocks=9, max_session_share=0.5)  # at most 4 pinned blocks
    for name in ("a", "b", "c"):
        block_ids = computed(kv, [ord(name)] * 8)
        kv.pin_session(name, block_ids, 8)
        kv.free(block_ids)
    assert kv.session_num_tokens("a") is None
    assert kv.session_num_tokens("b") == 8
    assert kv.session_num_tokens("c") == 8
    assert kv.usage().num_pinned_by_sessions == 4


def test_allocation_releases_lru_sessions_only_after_evictable_blocks() -> None:
    kv = make_kv(num_blocks=9, max_session_share=1.0)
    for name in ("a", "b", "c"):
        block_ids = computed(kv, [ord(name)] * 8)
        kv.pin_session(name, block_ids, 8)
        kv.free(block_ids)
    loose = computed(kv, [7] * 4)
    kv.free(loose)
    assert kv.usage().num_cached_evictable == 1
    got = kv.allocate(2)  # 1 free + 1 evictable: no session touched
    assert got is not None
    assert kv.session_num_tokens("a") == 8
    more = kv.allocate(1)  # must release a, the least recently used
    assert more is not None
    assert kv.session_num_tokens("a") is None
    assert kv.session_num_tokens("b") == 8
    assert kv.usage().num_cached_evictable == 1  # a's second block: still cached


def test_allocation_fails_when_sessions_cannot_help() -> None:
    kv = make_kv(num_blocks=5, max_session_share=1.0)
    block_ids = computed(kv, list(range(16)))
    kv.pin_session("s", block_ids, 16)  # still held by its sequence too
    assert kv.allocate(1) is None
    assert kv.session_num_tokens("s") == 16
    kv.free(block_ids)
    assert kv.allocate(4) is not None
    assert kv.session_num_tokens("s") is None


def test_release_unknown_session() -> None:
    kv = make_kv()
    assert kv.release_session("nope") is False


def test_usage_partition_with_overlap() -> None:
    kv = make_kv(num_blocks=9)
    block_ids = computed(kv, list(range(8)))
    kv.pin_session("s", block_ids, 8)
    usage = kv.usage()
    assert usage.num_used_by_running == 2  # pinned and running counts as running
    assert usage.num_pinned_by_sessions == 0
    assert_partition(usage)
    kv.free(block_ids)
    usage = kv.usage()
    assert usage.num_pinned_by_sessions == 2
    assert usage.usage_fraction == pytest.approx(2 / 8)
    assert_partition(usage)
