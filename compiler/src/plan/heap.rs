//! How XLA's buffer assignment packs a program's temporaries into the one
//! block of memory the CPU backend allocates for them: every buffer gets an
//! offset, and two buffers live at the same time never overlap. The block
//! can be larger than the most bytes live at once (fragmentation), by much
//! on small programs of many differently sized buffers.
//!
//! The packing is XLA's global decreasing-size best fit: the buffers are
//! placed one by one, largest first, each in the smallest gap that holds it
//! among the buffers already placed that are live at the same time, or at
//! the end of those; offsets are aligned. XLA packs twice, once taking the
//! buffers by size and once by length of life, and keeps the smaller block.

use std::cmp::Ordering;

/// A buffer to place: its bytes and the positions (in the program's run
/// order) where it is made and where it is last read, both inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live {
    pub bytes: u64,
    pub start: usize,
    pub end: usize,
}

impl Live {
    fn length(&self) -> usize {
        self.end - self.start
    }

    fn overlaps(&self, other: &Live) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

/// The alignment of every buffer's offset in the CPU backend's block.
const ALIGNMENT: u64 = 64;

/// The bytes of the block XLA packs `buffers` into.
pub fn packed_size(buffers: &[Live]) -> u64 {
    let by_size = |a: &Live, b: &Live| b.bytes.cmp(&a.bytes).then(b.length().cmp(&a.length()));
    let by_life = |a: &Live, b: &Live| b.length().cmp(&a.length()).then(b.bytes.cmp(&a.bytes));
    pack(buffers, by_size).0.min(pack(buffers, by_life).0)
}

/// The block's bytes and each buffer's offset (in the order given) when
/// `buffers` are placed in the order `first` sorts them into (ties in the
/// order given), each at its best fit.
fn pack(buffers: &[Live], first: impl Fn(&Live, &Live) -> Ordering) -> (u64, Vec<u64>) {
    let mut sorted: Vec<usize> = (0..buffers.len()).collect();
    sorted.sort_by(|&a, &b| first(&buffers[a], &buffers[b]));
    let mut offsets = vec![0u64; buffers.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(buffers.len());
    let mut block = 0u64;
    for i in sorted {
        let b = &buffers[i];
        if b.bytes == 0 {
            continue;
        }
        let mut taken: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&p| buffers[p].overlaps(b))
            .map(|&p| (offsets[p], offsets[p] + buffers[p].bytes))
            .collect();
        taken.sort_unstable();
        // The smallest gap that holds `b`, as (gap bytes, offset).
        let mut best: Option<(u64, u64)> = None;
        let mut fit = |at: u64, gap: u64| {
            if gap >= b.bytes && best.is_none_or(|(smallest, _)| gap < smallest) {
                best = Some((gap, at));
            }
        };
        let mut free_from = 0u64;
        for (start, end) in taken {
            if free_from < start {
                fit(free_from, start - free_from);
            }
            free_from = free_from.max(end.next_multiple_of(ALIGNMENT));
        }
        fit(free_from, block.saturating_sub(free_from));
        offsets[i] = best.map_or(free_from, |(_, at)| at);
        block = block.max(offsets[i] + b.bytes);
        placed.push(i);
    }
    (block, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(bytes: u64, start: usize, end: usize) -> Live {
        Live { bytes, start, end }
    }

    /// The most bytes live at one position.
    fn live_peak(buffers: &[Live]) -> u64 {
        let last = buffers.iter().map(|b| b.end).max().unwrap_or(0);
        (0..=last)
            .map(|t| buffers.iter().filter(|b| b.start <= t && t <= b.end).map(|b| b.bytes).sum())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn buffers_live_apart_share_their_bytes() {
        assert_eq!(packed_size(&[live(640, 0, 1), live(640, 2, 3), live(320, 4, 4)]), 640);
    }

    #[test]
    fn buffers_live_together_are_side_by_side_at_aligned_offsets() {
        assert_eq!(packed_size(&[live(100, 0, 2), live(100, 1, 3)]), 128 + 100);
    }

    #[test]
    fn fragmentation_makes_the_block_larger_than_the_live_peak() {
        // By size: the 256 at 0, the first 192 at 0 beside it in time, the
        // second 192 above the 256 at 256; the 128 then finds only a 64-byte
        // gap (192..256) and goes on top: 576. By length of life: 640.
        let buffers = [live(128, 2, 3), live(192, 1, 3), live(256, 4, 5), live(192, 2, 4)];
        assert_eq!(live_peak(&buffers), 512);
        assert_eq!(packed_size(&buffers), 576);
    }

    #[test]
    fn buffers_live_together_never_overlap_in_the_block() {
        // Random buffers (a fixed linear congruential sequence), both orders.
        let mut state = 12345u64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        for _ in 0..200 {
            let buffers: Vec<Live> = (0..next(12) + 1)
                .map(|_| {
                    let start = next(10) as usize;
                    live(next(1000), start, start + next(5) as usize)
                })
                .collect();
            let by_size = |a: &Live, b: &Live| b.bytes.cmp(&a.bytes);
            let (block, offsets) = pack(&buffers, by_size);
            for (i, a) in buffers.iter().enumerate() {
                assert!(offsets[i] % ALIGNMENT == 0 && offsets[i] + a.bytes <= block);
                for (j, b) in buffers.iter().enumerate().skip(i + 1) {
                    let apart = offsets[i] + a.bytes <= offsets[j] || offsets[j] + b.bytes <= offsets[i];
                    assert!(!a.overlaps(b) || a.bytes == 0 || b.bytes == 0 || apart, "{a:?} and {b:?}");
                }
            }
            assert!(packed_size(&buffers) >= live_peak(&buffers));
        }
    }
}
