//! Results packed into a few large page-locked blocks.
//!
//! libtorch's caching host allocator rounds every page-locked allocation up to a power of two, so
//! a chunk of 1.6 GiB of results took a 2 GiB block, and a 22 GiB Flux merge held ~37 GiB of
//! page-locked (always resident) host memory. The arena asks for blocks whose sizes already are
//! powers of two and fills them row by row, each row in the first block with room for it: what is
//! lost is the tails no later row fitted in. Told the run's rows ahead, it sizes the blocks to
//! what is left of them, so the last one is not a mostly empty gibibyte. The blocks come from the
//! same caching allocator, so a later run of the same merge gets the same sizes back from its
//! cache instead of page-locking memory again.

use tch::{Kind, Tensor};

/// The first block of a run; each next one doubles, up to [`MAX_BLOCK`], so a small merge does
/// not hold a large block and a large one needs few.
const FIRST_BLOCK: i64 = 64 << 20;
/// The largest block, unless a single row needs more.
const MAX_BLOCK: i64 = 1 << 30;
/// The smallest block when the run's total is known (a few keys need no more).
const MIN_BLOCK: i64 = 4 << 20;
/// The largest block when the run's total is known: fewer blocks, fewer tails that no later row
/// fits in.
const MAX_SIZED_BLOCK: i64 = 8 << 30;
/// Row offsets inside a block are multiples of this (any dtype's alignment, and the device's
/// copy engines like it).
const ALIGN: i64 = 256;

/// Where rows go, as bytes: the blocks of a run, how much of each is handed out, and the size of
/// the next one. Rows go to the first block with room for one (first fit): a block that a big row
/// left with a tail serves the smaller rows that come later.
#[derive(Debug, Default)]
struct Packer {
    /// (size, bytes handed out) per block, in the order they were opened.
    blocks: Vec<(i64, i64)>,
    next_block: i64,
    /// Bytes the run's rows still need, where the run said how many it has ([`Packer::expect`]).
    left: Option<i64>,
}

impl Packer {
    fn new() -> Packer {
        Packer { blocks: Vec::new(), next_block: FIRST_BLOCK, left: None }
    }

    /// The rows to come, as bytes each: new blocks are then sized to what is left instead of
    /// doubling, so the last ones are not a mostly empty gibibyte.
    fn expect(&mut self, rows: impl IntoIterator<Item = i64>) {
        // Each row may start a piece of its own, aligned.
        let bytes: i64 = rows.into_iter().map(align).sum();
        *self.left.get_or_insert(0) += bytes;
    }

    /// The size of a new block for a row of `row_bytes`: a power of two (what libtorch would
    /// round it to anyway), no larger than the doubling allows, and as large as what is left
    /// where that is within an eighth of a power of two, else the power of two below it (more
    /// blocks follow for the rest).
    fn block_size(&self, row_bytes: i64) -> i64 {
        let least = (row_bytes as u64).next_power_of_two() as i64;
        let Some(left) = self.left.filter(|&l| l > 0) else {
            return self.next_block.max(least);
        };
        let up = (left as u64).next_power_of_two() as i64;
        let size = if up - left <= left / 8 { up } else { up / 2 };
        size.min(self.next_block).clamp(MIN_BLOCK, MAX_SIZED_BLOCK).max(least)
    }

    /// Places 1 to `rows` rows of `row_bytes` each: in the first block with room for one, else in
    /// a new block, which `open(size)` must provide first; where it cannot, half the size is
    /// asked for, down to what one row needs (if even that fails, the packer stays as it was).
    /// Returns the block, the rows placed and their offset there.
    fn place(
        &mut self,
        rows: i64,
        row_bytes: i64,
        mut open: impl FnMut(i64) -> Result<(), tch::TchError>,
    ) -> Result<(usize, i64, i64), tch::TchError> {
        let found = self.blocks.iter().enumerate().find_map(|(i, &(size, used))| {
            let room = (size - align(used)) / row_bytes;
            (room >= 1).then_some(i)
        });
        let block = match found {
            Some(i) => i,
            None => {
                let least = (row_bytes as u64).next_power_of_two() as i64;
                let mut size = self.block_size(row_bytes);
                // Page-locked memory may run out before the host's: a smaller block may still fit.
                while let Err(e) = open(size) {
                    if size / 2 < least {
                        return Err(e);
                    }
                    size /= 2;
                }
                self.blocks.push((size, 0));
                self.next_block = (self.next_block * 2).min(if self.left.is_some() { MAX_SIZED_BLOCK } else { MAX_BLOCK });
                self.blocks.len() - 1
            }
        };
        let b = &mut self.blocks[block];
        let start = align(b.1);
        let n = ((b.0 - start) / row_bytes).min(rows);
        let used = start + n * row_bytes - b.1;
        b.1 = start + n * row_bytes;
        if let Some(left) = &mut self.left {
            *left = (*left - used).max(0);
        }
        Ok((block, n, start))
    }

    /// Bytes of every block opened.
    fn allocated(&self) -> u64 {
        self.blocks.iter().map(|b| b.0 as u64).sum()
    }
}

/// Hands out `[n, *row]` host tensors carved from blocks of `u8`s that `alloc` provides. Each
/// tensor is a view: its block stays allocated while any of them lives.
pub struct HostArena<'a> {
    alloc: Box<dyn FnMut(i64) -> Result<Tensor, tch::TchError> + 'a>,
    packer: Packer,
    /// One tensor per block of `packer`, same order.
    blocks: Vec<Tensor>,
}

impl<'a> HostArena<'a> {
    /// `alloc(bytes)`: a new contiguous `u8` host tensor of `bytes` elements.
    pub fn new(alloc: impl FnMut(i64) -> Result<Tensor, tch::TchError> + 'a) -> HostArena<'a> {
        HostArena { alloc: Box::new(alloc), packer: Packer::new(), blocks: Vec::new() }
    }

    /// Room for at most `rows` rows of shape `row` in `kind`, contiguous: a `[n, *row]` tensor,
    /// 1 ≤ n ≤ rows, in the first block with room for a row, or else in a new one. Its contents
    /// are uninitialized. `rows` must be at least 1.
    pub fn rows(&mut self, rows: i64, row: &[i64], kind: Kind) -> Result<Tensor, tch::TchError> {
        let row_bytes = (row.iter().product::<i64>() * kind.elt_size_in_bytes() as i64).max(1);
        let (alloc, blocks) = (&mut self.alloc, &mut self.blocks);
        let (block, n, start) = self.packer.place(rows, row_bytes, |size| {
            blocks.push(alloc(size)?);
            Ok(())
        })?;
        let mut shape = vec![n];
        shape.extend_from_slice(row);
        self.blocks[block].f_narrow(0, start, n * row_bytes)?.f_view_dtype(kind)?.f_view(shape.as_slice())
    }

    /// Says how many bytes each row to come holds (a run's merged keys): new blocks are sized to
    /// what is left of them instead of doubling. Without it, blocks double from 64 MiB to 1 GiB.
    pub fn expect(&mut self, rows: impl IntoIterator<Item = i64>) {
        self.packer.expect(rows);
    }

    /// Bytes of the blocks asked for so far.
    pub fn allocated(&self) -> u64 {
        self.packer.allocated()
    }
}

fn align(offset: i64) -> i64 {
    (offset + ALIGN - 1) / ALIGN * ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use tch::Device;

    /// Host blocks for the arena, each recorded as (bytes, address).
    fn host_blocks(blocks: &RefCell<Vec<(i64, usize)>>) -> impl FnMut(i64) -> Result<Tensor, tch::TchError> + '_ {
        move |bytes| {
            // Uninitialized: the big blocks of these tests are never touched, so they take no memory.
            let t = Tensor::f_empty([bytes], (Kind::Uint8, Device::Cpu))?;
            blocks.borrow_mut().push((bytes, t.data_ptr() as usize));
            Ok(t)
        }
    }

    fn sizes(blocks: &RefCell<Vec<(i64, usize)>>) -> Vec<i64> {
        blocks.borrow().iter().map(|b| b.0).collect()
    }

    /// The byte range a tensor covers.
    fn span(t: &Tensor) -> (usize, usize) {
        let start = t.data_ptr() as usize;
        (start, start + t.numel() * t.kind().elt_size_in_bytes())
    }

    #[test]
    fn rows_fill_blocks_in_order_without_overlapping() {
        let blocks = RefCell::new(Vec::new());
        let mut arena = HostArena::new(host_blocks(&blocks));
        // 10 MiB rows of bf16: six fit in the first 64 MiB block.
        let row = [5 << 20];
        let a = arena.rows(4, &row, Kind::BFloat16).unwrap();
        let b = arena.rows(4, &row, Kind::BFloat16).unwrap();
        assert_eq!(a.size(), vec![4, 5 << 20]);
        assert_eq!(b.size(), vec![2, 5 << 20], "only what is left of the block");
        assert_eq!(span(&a).0, blocks.borrow()[0].1, "the first rows start the block");
        assert_eq!(span(&a).1, span(&b).0, "10 MiB rows need no padding between them");
        let c = arena.rows(2, &row, Kind::BFloat16).unwrap();
        assert_eq!(c.size()[0], 2);
        assert_eq!(sizes(&blocks), vec![64 << 20, 128 << 20], "a new block, twice the size");
        let spans = [span(&a), span(&b), span(&c)];
        for (i, x) in spans.iter().enumerate() {
            for y in &spans[i + 1..] {
                assert!(x.1 <= y.0 || y.1 <= x.0, "{x:?} and {y:?} overlap");
            }
        }
        // The views are the arena's memory: what is written through one is there to read back.
        let _ = a.get(3).f_fill_(1.5).unwrap();
        assert_eq!(a.get(3).double_value(&[7]), 1.5);
        assert_eq!(arena.allocated(), 192 << 20);
    }

    /// What libtorch says when page-locked memory runs out.
    fn out_of_memory() -> tch::TchError {
        tch::TchError::Torch("CUDA error: out of memory".into())
    }

    #[test]
    fn a_block_that_cannot_be_allocated_changes_nothing() {
        let calls = std::cell::Cell::new(0);
        let mut arena = HostArena::new(|bytes| {
            calls.set(calls.get() + 1);
            // The second block fails at its own size and at the 64 MiB a 40 MiB row needs.
            if (2..=3).contains(&calls.get()) {
                return Err(out_of_memory());
            }
            Tensor::f_empty([bytes], (Kind::Uint8, Device::Cpu))
        });
        let first = arena.rows(1, &[40 << 20], Kind::Uint8).unwrap();
        assert!(arena.rows(1, &[40 << 20], Kind::Uint8).is_err(), "the second block fails");
        assert_eq!(calls.get(), 3, "asked for at 128 MiB, then at 64 MiB");
        assert_eq!(arena.allocated(), 64 << 20, "and is not counted");
        // What the first block has left still serves smaller rows, right after the first one.
        let small = arena.rows(1, &[1 << 20], Kind::Uint8).unwrap();
        assert_eq!(span(&small).0, span(&first).1);
        // The next block is asked for again, at the size the failed one had.
        let next = arena.rows(1, &[40 << 20], Kind::Uint8).unwrap();
        assert_eq!(arena.allocated(), (64 << 20) + (128 << 20));
        assert!(span(&next).0 >= span(&small).1 || span(&next).1 <= span(&first).0);
    }

    #[test]
    fn where_a_block_cannot_be_allocated_a_smaller_one_is_asked_for() {
        let asked = RefCell::new(Vec::new());
        let mut arena = HostArena::new(|bytes| {
            asked.borrow_mut().push(bytes);
            if bytes > 256 << 20 {
                return Err(out_of_memory());
            }
            Tensor::f_empty([bytes], (Kind::Uint8, Device::Cpu))
        });
        // 3 GiB of 100 MiB rows, said ahead: the first blocks would be 64 and 128 MiB (doubling),
        // the first too small for a row, so 128 MiB twice; then 256 MiB; then 512 MiB fails and
        // 256 MiB serves.
        arena.expect(std::iter::repeat_n(100 << 20, 30));
        for _ in 0..4 {
            let t = arena.rows(2, &[100 << 20], Kind::Uint8).unwrap();
            assert!(t.size()[0] >= 1);
        }
        assert_eq!(*asked.borrow(), [128 << 20, 128 << 20, 256 << 20, 512 << 20, 256 << 20]);
        assert!(arena.rows(1, &[300 << 20], Kind::Uint8).is_err(), "a row larger than any block that can be had");
    }

    /// With the run's rows said ahead, blocks follow what is left: a few small keys take one
    /// small block, not 64 MiB.
    #[test]
    fn blocks_are_sized_to_the_rows_said_ahead() {
        let blocks = RefCell::new(Vec::new());
        let mut arena = HostArena::new(host_blocks(&blocks));
        arena.expect([1 << 20, 1 << 20, 1 << 20]);
        let _a = arena.rows(3, &[1 << 20], Kind::Uint8).unwrap();
        assert_eq!(sizes(&blocks), vec![4 << 20], "the smallest block");
        // 300 MiB in 10 MiB rows: 64 and 128 MiB as the doubling allows, then 120 MiB are left,
        // within an eighth of 128 MiB, which takes them.
        let blocks = RefCell::new(Vec::new());
        let mut arena = HostArena::new(host_blocks(&blocks));
        arena.expect(std::iter::repeat_n(10 << 20, 30));
        let mut left = 30;
        let mut kept = Vec::new();
        while left > 0 {
            let t = arena.rows(left, &[10 << 20], Kind::Uint8).unwrap();
            left -= t.size()[0];
            kept.push(t);
        }
        assert_eq!(sizes(&blocks), vec![64 << 20, 128 << 20, 128 << 20]);
    }

    #[test]
    fn rows_come_in_every_storage_dtype_of_a_merge() {
        let blocks = RefCell::new(Vec::new());
        let mut arena = HostArena::new(host_blocks(&blocks));
        for kind in [Kind::Float, Kind::Half, Kind::BFloat16, Kind::Float8e4m3fn, Kind::Float8e5m2] {
            let t = arena.rows(2, &[3, 5], kind).unwrap();
            assert_eq!((t.size(), t.kind()), (vec![2, 3, 5], kind));
            assert!(t.is_contiguous());
        }
        assert_eq!(blocks.borrow().len(), 1);
    }

    #[test]
    fn odd_rows_start_aligned_and_blocks_stop_doubling() {
        let blocks = RefCell::new(Vec::new());
        let mut arena = HostArena::new(host_blocks(&blocks));
        let mut total = 0u64;
        let mut pieces = Vec::new();
        // 3,001 fp32 rows of 100,003 values (1.2 GB): every piece starts aligned in its block.
        let mut left = 3001;
        while left > 0 {
            let t = arena.rows(left, &[100_003], Kind::Float).unwrap();
            let at = t.data_ptr() as usize;
            let block = blocks.borrow().iter().rev().map(|b| b.1).find(|&b| b <= at).unwrap();
            assert_eq!((at - block) % 256, 0, "each piece starts aligned in its block");
            left -= t.size()[0];
            total += (t.numel() * 4) as u64;
            pieces.push(t);
        }
        assert_eq!(total, 3001 * 100_003 * 4);
        let sizes = sizes(&blocks);
        assert_eq!(sizes[..5], [64 << 20, 128 << 20, 256 << 20, 512 << 20, 1 << 30]);
        assert!(sizes.iter().all(|&s| s <= 1 << 30));
        // Lost: less than a row at the tail of each block, and what the last block has left.
        let last_left = *sizes.last().unwrap() as u64;
        assert!(arena.allocated() - total < 100_003 * 4 * sizes.len() as u64 + last_left);
    }

    #[test]
    fn a_tail_left_by_big_rows_serves_the_smaller_rows_after_them() {
        let blocks = RefCell::new(Vec::new());
        let mut arena = HostArena::new(host_blocks(&blocks));
        let big = [40 << 20];
        let first = arena.rows(1, &big, Kind::Uint8).unwrap();
        let second = arena.rows(1, &big, Kind::Uint8).unwrap();
        assert_eq!(sizes(&blocks), vec![64 << 20, 128 << 20], "the second 40 MiB row does not fit the first block's 24 MiB");
        let small = arena.rows(3, &[10 << 20], Kind::Uint8).unwrap();
        assert_eq!(small.size()[0], 2, "two 10 MiB rows fit the first block's tail");
        assert_eq!(span(&small).0, span(&first).1, "right after the first row");
        let rest = arena.rows(1, &[10 << 20], Kind::Uint8).unwrap();
        assert_eq!(span(&rest).0, span(&second).1, "the next row goes to the second block");
        assert_eq!(blocks.borrow().len(), 2);
    }

    /// Flux-dev with LoRAs on every linear layer (22.16 GiB of bf16 results, rows up to 132 MB),
    /// in the order the Exit computes them on a GPU (groups of one shape, smallest first): blocks
    /// of libtorch's own for each chunk held 37 GiB; blocks doubling to 1 GiB leave 0.8 GiB
    /// unused, blocks sized to the rows said ahead (up to 8 GiB: fewer tails) 0.3 GiB.
    #[test]
    fn a_flux_merge_packs_within_a_gibibyte_of_its_size() {
        use crate::arch::layout::{layout, LayoutSize};
        use crate::arch::Arch;
        let l = layout(Arch::Flux, LayoutSize::Full);
        let mut groups: std::collections::BTreeMap<Vec<i64>, i64> = Default::default();
        for p in l.params.iter().filter(|p| p.key.ends_with(".weight") && p.shape.len() == 2) {
            *groups.entry(p.shape.iter().map(|&d| d as i64).collect()).or_default() += 1;
        }
        let mut groups: Vec<(Vec<i64>, i64)> = groups.into_iter().collect();
        groups.sort_by_key(|(shape, n)| shape.iter().product::<i64>() * n);
        let pack = |expected: bool| {
            let mut packer = Packer::new();
            if expected {
                packer.expect(groups.iter().flat_map(|(shape, keys)| std::iter::repeat_n(shape.iter().product::<i64>() * 2, *keys as usize)));
            }
            let mut used = 0u64;
            for (shape, keys) in &groups {
                let row_bytes = shape.iter().product::<i64>() * 2;
                let mut left = *keys;
                while left > 0 {
                    let (_, n, _) = packer.place(left, row_bytes, |_| Ok(())).unwrap();
                    used += (n * row_bytes) as u64;
                    left -= n;
                }
            }
            (packer.allocated(), used)
        };
        assert_eq!(groups.iter().map(|g| g.1).sum::<i64>(), 314, "every linear layer of Flux-dev");
        let (doubling, used) = pack(false);
        assert!(used > 22 << 30, "{used}");
        assert!(doubling - used < 1 << 30, "{doubling} allocated for {used}");
        // Sized to what the run said it holds: the last blocks are not mostly empty gibibytes.
        let (sized, same) = pack(true);
        assert_eq!(same, used);
        eprintln!("unused: {} MiB doubling, {} MiB sized", (doubling - used) >> 20, (sized - used) >> 20);
        assert!(sized - used < 320 << 20, "{sized} allocated for {used}");
    }

    #[test]
    fn a_row_larger_than_any_block_gets_a_block_of_its_own() {
        let blocks = RefCell::new(Vec::new());
        let mut arena = HostArena::new(host_blocks(&blocks));
        let small = arena.rows(1, &[16], Kind::Half).unwrap();
        let big = arena.rows(3, &[(1 << 30) + 8], Kind::Uint8).unwrap();
        assert_eq!(big.size(), vec![1, (1 << 30) + 8]);
        assert_eq!(sizes(&blocks), vec![64 << 20, 2 << 30]);
        // The rest of the big block serves rows that the first block has no room for.
        let next = arena.rows(1, &[100 << 20], Kind::Uint8).unwrap();
        assert!(span(&next).0 >= span(&big).1);
        assert_eq!(blocks.borrow().len(), 2);
        drop(small);
    }
}
