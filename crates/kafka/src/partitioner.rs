//! Which partition a session's records land in: the Java client's default partitioner
//! (murmur2 of the key, positive, modulo the partition count), which the producer is
//! configured to use (`partitioner=murmur2_random`). The gateway computes it to read a
//! session's history straight from its partition when the Valkey window cannot serve it.

/// Kafka's murmur2 (32-bit, seed `0x9747b28c`), as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut h: u32 = 0x9747_b28c ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a record keyed `key` goes to among `partitions` (at least 1).
pub fn partition_for(key: &[u8], partitions: usize) -> i32 {
    let partitions = u32::try_from(partitions.max(1)).unwrap_or(u32::MAX);
    i32::try_from((murmur2(key) & 0x7fff_ffff) % partitions).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_in_range_and_stable() {
        for key in ["acme:planner:s1", "", "t:a:s", "a-little-bit-longer-string"] {
            let p = partition_for(key.as_bytes(), 8);
            assert!((0..8).contains(&p));
            assert_eq!(p, partition_for(key.as_bytes(), 8));
        }
        assert_eq!(partition_for(b"anything", 1), 0);
    }

    #[test]
    fn every_tail_length_changes_the_hash() {
        let hashes: std::collections::BTreeSet<u32> = ["abcd", "abcde", "abcdef", "abcdefg"]
            .iter()
            .map(|k| murmur2(k.as_bytes()))
            .collect();
        assert_eq!(hashes.len(), 4);
    }
}
