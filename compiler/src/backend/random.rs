//! The numbers of `random_uniform`, as XLA makes them: its `THREE_FRY`
//! `rng_bit_generator` on a `ui64[2]` state `[key, counter]` gives element
//! `i` (row-major) the Threefry-2x32 (20 rounds) encryption of `counter + i`
//! under `key`, as 64 bits. The lowering asks XLA for those bits; the
//! interpreter computes them here, so both backends give the same numbers.

/// The stream's offset in the counter: stream `s` starts at `s << COUNTER_SHIFT`.
pub const COUNTER_SHIFT: u32 = 40;

/// The generator's initial state for `seed` and `stream`: `[key, counter]`.
pub fn state(seed: i64, stream: u64) -> [u64; 2] {
    [seed as u64, stream << COUNTER_SHIFT]
}

/// How far right a 64-bit draw shifts to keep `bits` significant bits.
pub fn shift(bits: u32) -> u32 {
    64 - bits
}

/// `count` uniform numbers in `[0, 1)`, each the top `bits` of a draw times 2^-bits.
pub fn uniform(seed: i64, stream: u64, count: usize, bits: u32) -> Vec<f64> {
    let [key, counter] = state(seed, stream);
    let scale = (-(bits as f64)).exp2();
    (0..count as u64).map(|i| (threefry2x32(key, counter.wrapping_add(i)) >> shift(bits)) as f64 * scale).collect()
}

/// Threefry-2x32 with 20 rounds (Salmon et al., SC 2011) of the block
/// `x` under `key`, both split into (low, high) 32-bit words.
fn threefry2x32(key: u64, x: u64) -> u64 {
    const ROTATIONS: [u32; 8] = [13, 15, 26, 6, 17, 29, 16, 24];
    let ks = [key as u32, (key >> 32) as u32, 0x1BD1_1BDA ^ key as u32 ^ (key >> 32) as u32];
    let mut v = [(x as u32).wrapping_add(ks[0]), ((x >> 32) as u32).wrapping_add(ks[1])];
    for group in 0..5u32 {
        for &r in &ROTATIONS[(group as usize % 2) * 4..][..4] {
            v[0] = v[0].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(r) ^ v[0];
        }
        // Key injection after every four rounds.
        let g = group as usize + 1;
        v[0] = v[0].wrapping_add(ks[g % 3]);
        v[1] = v[1].wrapping_add(ks[(g + 1) % 3]).wrapping_add(group + 1);
    }
    v[0] as u64 | (v[1] as u64) << 32
}

#[cfg(test)]
mod tests {
    use super::threefry2x32;

    /// The known-answer vectors of Random123's kat_vectors for threefry2x32_20.
    #[test]
    fn threefry_matches_the_published_test_vectors() {
        let block = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
        assert_eq!(threefry2x32(0, 0), block(0x6b20_0159, 0x99ba_4efe));
        assert_eq!(threefry2x32(u64::MAX, u64::MAX), block(0x1cb9_96fc, 0xbb00_2be7));
        assert_eq!(
            threefry2x32(block(0x1319_8a2e, 0x0370_7344), block(0x243f_6a88, 0x85a3_08d3)),
            block(0xc492_3a9c, 0x483d_f7a0)
        );
    }
}
