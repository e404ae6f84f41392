"""KV memory manager: block ids, ref counts, prefix cache and session pins. Holds no tensors."""

from __future__ import annotations

import hashlib
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

BlockHash = bytes  # sha256 over (parent hash, block tokens): a chain, so equal hash = equal prefix

_ROOT_HASH: BlockHash = b""


def root_hash(cache_salt: str) -> BlockHash:
    """Where a salt's hash chains start: equal prefixes under two salts never share a block.

    The unsalted root stays b"" so that salt-free callers hash as before.
    """
    if not cache_salt:
        return _ROOT_HASH
    return hashlib.sha256(b"banterbox-cache-salt\x00" + cache_salt.encode("utf-8")).digest()


def hash_block(parent_hash: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    """Key of one full block: sha256 makes a silent collision practically impossible."""
    return hashlib.sha256(parent_hash + array("q", token_ids).tobytes()).digest()


@dataclass(frozen=True, kw_only=True)
class KVUsage:
    """Where the usable blocks are. The four counts partition num_blocks."""

    num_blocks: int  # usable blocks: the null block 0 is not counted
    num_free: int  # unreferenced and holding nothing worth keeping
    num_cached_evictable: int  # unreferenced, still findable by prefix lookup, LRU-evicted
    num_used_by_running: int  # referenced by at least one sequence (maybe pinned too)
    num_pinned_by_sessions: int  # referenced only by session pins
    usage_fraction: float  # referenced blocks / num_blocks


@dataclass(kw_only=True)
class _Session:
    block_ids: tuple[int, ...]
    num_tokens: int
    last_used: float


class KVCacheManager:
    """Hands out block ids for a fixed budget of KV blocks; the model runner owns the tensors.

    Block 0 is the null block: never handed out, so the runner can pad block tables with it.
    A full block whose KV has been computed is registered under its hash chain and stays
    findable after its sequence ends, until evicted (LRU) to make room. Sessions hold a ref
    on the full blocks of their last turn, so the next turn finds its history cached.
    """

    NULL_BLOCK_ID = 0

    def __init__(
        self,
        *,
        num_blocks: int,
        block_size: int = 16,
        session_ttl_s: float = 600.0,  # an idle session's pins are dropped after this
        max_session_share: float = 0.5,  # at most this fraction of blocks pinned by sessions
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (block 0 is reserved), got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if session_ttl_s <= 0:
            raise ValueError(f"session_ttl_s must be > 0, got {session_ttl_s}")
        if not 0.0 <= max_session_share <= 1.0:
            raise ValueError(f"max_session_share must be in [0, 1], got {max_session_share}")
        self._num_blocks = num_blocks
        self._block_size = block_size
        self._session_ttl_s = session_ttl_s
        self._max_session_blocks = int(max_session_share * (num_blocks - 1))
        self._clock = clock
        self._ref_counts = [0] * num_blocks
        self._free: deque[int] = deque(range(1, num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # oldest first
        self._hash_to_block: dict[BlockHash, int] = {}
        self._block_to_hash: dict[int, BlockHash] = {}
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently used first
        self._session_refs: dict[int, int] = {}  # block id -> number of sessions pinning it
        self._num_prefix_hit_tokens_total = 0
        self._num_evictions_total = 0

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_usable_blocks(self) -> int:
        return self._num_blocks - 1

    @property
    def num_prefix_hit_tokens_total(self) -> int:
        return self._num_prefix_hit_tokens_total

    @property
    def num_evictions_total(self) -> int:
        return self._num_evictions_total

    def blocks_for(self, num_tokens: int) -> int:
        """How many blocks hold num_tokens tokens."""
        return -(-num_tokens // self._block_size)

    def find_cached_prefix(
        self, token_ids: Sequence[int], *, cache_salt: str = ""
    ) -> tuple[list[int], int]:
        """Longest chain of cached full blocks starting at token 0; takes no refs.

        Only blocks cached under the same cache_salt are found (tenant isolation).
        Stops one token short of the end: the last token must be recomputed for its logits.
        """
        bs = self._block_size
        block_ids: list[int] = []
        parent = root_hash(cache_salt)
        for i in range((len(token_ids) - 1) // bs):
            parent = hash_block(parent, token_ids[i * bs : (i + 1) * bs])
            block_id = self._hash_to_block.get(parent)
            if block_id is None:
                break
            block_ids.append(block_id)
        return block_ids, len(block_ids) * bs

    def allocate(
        self, num_blocks: int, *, cached_block_ids: Sequence[int] = ()
    ) -> list[int] | None:
        """Take a ref on cached_block_ids (a find_cached_prefix hit) and on num_blocks fresh ones.

        Returns cached + fresh block ids, or None with nothing changed when the blocks cannot
        be had even after evicting cached blocks and releasing every session.
        """
        if not self._can_allocate(num_blocks, exclude=frozenset(cached_block_ids)):
            return None
        for block_id in cached_block_ids:
            self._take_ref(block_id)
        fresh = [self._pop_block() for _ in range(num_blocks)]
        for block_id in fresh:
            self._ref_counts[block_id] = 1
        self._num_prefix_hit_tokens_total += len(cached_block_ids) * self._block_size
        return [*cached_block_ids, *fresh]

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one ref on each block. Tail blocks first, so they are evicted before the head."""
        for block_id in reversed(block_ids):
            self._drop_ref(block_id)

    def cache_computed_blocks(
        self,
        block_ids: Sequence[int],
        token_ids: Sequence[int],
        *,
        num_computed_tokens: int,
        block_hashes: Sequence[BlockHash],
        cache_salt: str = "",
    ) -> list[BlockHash]:
        """Register the full blocks whose KV is now computed; returns their hashes.

        block_hashes are the hashes already returned for this block table (its leading blocks).
        A block whose hash another block already holds stays unregistered: freed, it goes
        straight back to the free list.
        """
        bs = self._block_size
        num_full = min(num_computed_tokens // bs, len(block_ids))
        parent = block_hashes[-1] if block_hashes else root_hash(cache_salt)
        new_hashes: list[BlockHash] = []
        for i in range(len(block_hashes), num_full):
            parent = hash_block(parent, token_ids[i * bs : (i + 1) * bs])
            if parent not in self._hash_to_block:
                self._hash_to_block[parent] = block_ids[i]
                self._block_to_hash[block_ids[i]] = parent
            new_hashes.append(parent)
        return new_hashes

    def pin_session(self, session_id: str, block_ids: Sequence[int], num_tokens: int) -> None:
        """Hold a ref on block_ids (num_tokens of KV) for the session, replacing its old pin."""
        if len(block_ids) != self.blocks_for(num_tokens):
            raise ValueError(f"{len(block_ids)} blocks cannot hold exactly {num_tokens} tokens")
        if any(self._is_free(block_id) for block_id in block_ids):
            raise ValueError("a session can only pin blocks that hold KV")
        for block_id in block_ids:
            self._take_ref(block_id)
            self._session_refs[block_id] = self._session_refs.get(block_id, 0) + 1
        old = self._sessions.pop(session_id, None)
        self._sessions[session_id] = _Session(
            block_ids=tuple(block_ids), num_tokens=num_tokens, last_used=self._clock()
        )
        if old is not None:
            self._unpin(old)
        while len(self._session_refs) > self._max_session_blocks and self._sessions:
            self._release_lru_session()

    def release_session(self, session_id: str) -> bool:
        """Drop the session's pins; its blocks stay cached until evicted. False if unknown."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self._unpin(session)
        return True

    def expire_sessions(self) -> int:
        """Release sessions idle for longer than session_ttl_s; returns how many."""
        now = self._clock()
        num_released = 0
        while self._sessions:
            session = next(iter(self._sessions.values()))
            if now - session.last_used <= self._session_ttl_s:
                break
            self._release_lru_session()
            num_released += 1
        return num_released

    def session_num_tokens(self, session_id: str) -> int | None:
        """Tokens of KV the session pins, or None when it pins nothing."""
        session = self._sessions.get(session_id)
        return None if session is None else session.num_tokens

    def usage(self) -> KVUsage:
        num_usable = self.num_usable_blocks
        num_session_only = sum(
            1 for block_id, n in self._session_refs.items() if self._ref_counts[block_id] == n
        )
        num_unreferenced = len(self._free) + len(self._evictable)
        return KVUsage(
            num_blocks=num_usable,
            num_free=len(self._free),
            num_cached_evictable=len(self._evictable),
            num_used_by_running=num_usable - num_unreferenced - num_session_only,
            num_pinned_by_sessions=num_session_only,
            usage_fraction=(num_usable - num_unreferenced) / num_usable,
        )

    def _can_allocate(self, num_blocks: int, *, exclude: frozenset[int]) -> bool:
        num_available = len(self._free) + len(self._evictable)
        num_available -= sum(1 for block_id in exclude if block_id in self._evictable)
        if num_available >= num_blocks:
            return True
        num_available += sum(
            1
            for block_id, n in self._session_refs.items()
            if self._ref_counts[block_id] == n and block_id not in exclude
        )
        return num_available >= num_blocks

    def _pop_block(self) -> int:
        while not self._free and not self._evictable:
            if not self._sessions:
                raise RuntimeError("no block to hand out: _can_allocate was wrong")
            self._release_lru_session()
        if self._free:
            return self._free.popleft()
        block_id, _ = self._evictable.popitem(last=False)
        del self._hash_to_block[self._block_to_hash.pop(block_id)]
        self._num_evictions_total += 1
        return block_id

    def _is_free(self, block_id: int) -> bool:
        return self._ref_counts[block_id] == 0 and block_id not in self._evictable

    def _take_ref(self, block_id: int) -> None:
        if self._is_free(block_id):
            raise ValueError(f"block {block_id} is free: nothing to share")
        if self._ref_counts[block_id] == 0:
            del self._evictable[block_id]
        self._ref_counts[block_id] += 1

    def _drop_ref(self, block_id: int) -> None:
        if self._ref_counts[block_id] <= 0:
            raise ValueError(f"block {block_id} freed more often than allocated")
        self._ref_counts[block_id] -= 1
        if self._ref_counts[block_id] > 0:
            return
        if block_id in self._block_to_hash:
            self._evictable[block_id] = None
        else:
            self._free.append(block_id)

    def _release_lru_session(self) -> None:
        _, session = self._sessions.popitem(last=False)
        self._unpin(session)

    def _unpin(self, session: _Session) -> None:
        for block_id in session.block_ids:
            n = self._session_refs[block_id] - 1
            if n:
                self._session_refs[block_id] = n
            else:
                del self._session_refs[block_id]
        self.free(session.block_ids)
