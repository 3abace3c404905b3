//! What the process really holds for a value, for the bounds that weigh cache entries, records
//! and keys: the allocator's size classes and the fixed costs beside a value (an `Arc`'s counters,
//! a shared `Bytes`' control block, a header map's tables). A leaf: the cache, its stored answers
//! and the create records all weigh with it.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The counters in front of an `Arc`'s value.
pub(crate) const ARC_HEADER: usize = 16;
/// What the allocator really takes for `n` bytes. The binary's allocator, mimalloc, keeps no
/// header in front of a block but rounds it up to its size class: a multiple of 8 up to 64 bytes,
/// then four classes per power of two (80, 96, 112, 128, 160, ...).
pub(crate) fn malloc_size(n: usize) -> usize {
    if n <= 64 {
        return n.max(1).next_multiple_of(8);
    }
    let log2 = usize::BITS - 1 - (n - 1).leading_zeros();
    n.next_multiple_of(1 << (log2 - 2))
}

/// A header map's tables: a bucket per header slot (name, value, hash and links) and the index
/// (4 bytes per slot, a power of two above the slots). The values' bytes are counted apart.
pub(crate) fn header_map_bytes(headers: &HeaderMap) -> usize {
    let slots = headers.capacity().max(headers.len());
    if slots == 0 {
        return 0;
    }
    let bucket = std::mem::size_of::<HeaderName>() + std::mem::size_of::<HeaderValue>() + 24;
    let index = (slots + slots / 3).next_power_of_two() * 4;
    malloc_size(slots * bucket) + malloc_size(index)
}

/// The control block `Bytes` allocates once a buffer is shared.
pub(crate) const BYTES_SHARED: usize = 24;
