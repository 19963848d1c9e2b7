//! Reading order by blocks.
//!
//! Words grow into blocks: a block takes the lines of the same size just above and below it
//! that overlap it, the words on its own lines that overlap or nearly touch it, and a few words
//! just beside it. So a paragraph, a table cell, a caption or a label is one block, and a gutter
//! or a column gap of a table separates blocks.
//!
//! Blocks are then ordered by two rules (T. M. Breuel, "High Performance Document Layout
//! Analysis", 2003): a block comes before a block that it overlaps horizontally and is above; and
//! before a block that lies wholly to its right (to its left on a right-to-left page), unless some
//! third block lies below the first and above the second. Each block is widened first to the
//! blocks below it that it could head, up to its neighbours on either side, so a heading over a
//! column is read before that column. Columns come out one after the other, a title over them
//! first. Blocks that line up in rows and columns (a block, its neighbours to the right and
//! below, and the one diagonally between them) are cells of a table, read row by row, and the
//! table is placed among the other blocks as a whole. This is the order poppler's `pdftotext`
//! reads in, which the extraction is scored against (docs/BENCHMARKS.md).

use super::layout::Word;

/// Above this many words on a page the page is read line by line, without blocks: growing
/// blocks costs O(n²) when many words share a line.
pub(super) const MAX_BLOCK_WORDS: usize = 5000;

/// Above this many blocks on a page (a scatter of single words: a chart, a map) the blocks are
/// read top to bottom and left to right: the ordering costs O(n³/64).
const MAX_ORDERED_BLOCKS: usize = 1500;

/// A block: its words and its box, y growing downwards.
pub(super) struct Block {
    pub words: Vec<Word>,
    x0: f32,
    x1: f32,
    top: f32,
    bottom: f32,
    size: f32,
    /// the box widened to the blocks below it that it could head (for a table's cell: the table)
    ex0: f32,
    ex1: f32,
    /// the top that ordering compares: the block's own, or its table's
    etop: f32,
    /// the table the block is a cell of
    table: Option<usize>,
}

/// A word's baseline, growing downwards.
fn base(w: &Word) -> f32 {
    -w.y
}

impl Block {
    fn new(w: Word) -> Self {
        let mut b = Block {
            words: Vec::new(),
            x0: f32::MAX,
            x1: f32::MIN,
            top: f32::MAX,
            bottom: f32::MIN,
            size: w.size,
            ex0: 0.0,
            ex1: 0.0,
            etop: 0.0,
            table: None,
        };
        b.add(w);
        b
    }

    fn add(&mut self, w: Word) {
        self.x0 = self.x0.min(w.x0);
        self.x1 = self.x1.max(w.x1);
        self.top = self.top.min(base(&w) - 0.8 * w.size);
        self.bottom = self.bottom.max(base(&w) + 0.25 * w.size);
        self.words.push(w);
    }

    /// The baseline of a block that is one line.
    fn single_line(&self) -> Option<f32> {
        let first = base(&self.words[0]);
        self.words.iter().all(|w| (base(w) - first).abs() < 0.3 * self.size).then_some(first)
    }
}

/// Grows blocks out of a page's words, top to bottom.
pub(super) fn blocks(mut words: Vec<Word>) -> Vec<Block> {
    words.sort_by(|a, b| base(a).total_cmp(&base(b)).then(a.x0.total_cmp(&b.x0)));
    let bases: Vec<f32> = words.iter().map(base).collect();
    let mut left: Vec<Option<Word>> = words.into_iter().map(Some).collect();
    // the words whose baselines lie in [lo, hi]
    let window = |lo: f32, hi: f32| bases.partition_point(|b| *b < lo)..bases.partition_point(|b| *b <= hi);
    let mut first = 0;
    let mut out = Vec::new();
    loop {
        while first < left.len() && left[first].is_none() {
            first += 1;
        }
        let Some(top) = left.get(first).and_then(Option::as_ref) else { break };
        // the left-most word of the first few lines, so that a block does not start with a
        // superscript
        let start = window(bases[first], bases[first] + 3.0 * top.size)
            .filter(|&i| left[i].is_some())
            .min_by(|&i, &j| {
                let x = |k: usize| left[k].as_ref().map_or(f32::MAX, |w| w.x0);
                x(i).total_cmp(&x(j))
            })
            .unwrap_or(first);
        let Some(seed) = left[start].take() else { break };
        let size = seed.size;
        let (line_space, intra, near, beside) = (1.5 * size, 0.5 * size, 0.7 * size, 1.0 * size);
        let (mut min_base, mut max_base) = (base(&seed), base(&seed));
        let mut blk = Block::new(seed);
        loop {
            let mut found = false;
            // the lines just above and below, of the same size, that overlap the block
            let (mut new_min, mut new_max) = (min_base, max_base);
            for i in window(min_base - line_space, max_base + line_space) {
                let Some(w) = left[i].as_ref() else { continue };
                let b = bases[i];
                if (b < min_base || b > max_base)
                    && w.x0 < blk.x1
                    && w.x1 > blk.x0
                    && (w.size - size).abs() < 0.05 * size
                {
                    new_min = new_min.min(b);
                    new_max = new_max.max(b);
                    blk.add(left[i].take().expect("checked"));
                    found = true;
                }
            }
            (min_base, max_base) = (new_min, new_max);
            // words on the block's lines that overlap it or nearly touch it
            let mut grew = true;
            while grew {
                grew = false;
                for i in window(min_base - intra, max_base + intra) {
                    let Some(w) = left[i].as_ref() else { continue };
                    if w.x0 < blk.x1 + near && w.x1 > blk.x0 - near && (w.size - size).abs() < 0.6 * size {
                        blk.add(left[i].take().expect("checked"));
                        found = true;
                        grew = true;
                    }
                }
            }
            if found {
                continue;
            }
            // a few outlying words just beside the block: on three of its lines at most
            for right in [false, true] {
                let (lo, hi) = (min_base, max_base);
                let beside = |w: &Word, blk: &Block| {
                    (w.size - size).abs() < 0.2 * size
                        && if right {
                            w.x0 >= blk.x1 && w.x0 < blk.x1 + beside
                        } else {
                            w.x1 <= blk.x0 && w.x1 > blk.x0 - beside
                        }
                };
                let range = window(lo - intra, hi + intra);
                let mut lines: Vec<f32> = Vec::new();
                for i in range.clone() {
                    if left[i].as_ref().is_some_and(|w| beside(w, &blk))
                        && !lines.iter().any(|l| (l - bases[i]).abs() < 0.5 * size)
                    {
                        lines.push(bases[i]);
                    }
                }
                if (1..=3).contains(&lines.len()) {
                    for i in range {
                        if left[i].as_ref().is_some_and(|w| beside(w, &blk)) {
                            min_base = min_base.min(bases[i]);
                            max_base = max_base.max(bases[i]);
                            blk.add(left[i].take().expect("checked"));
                            found = true;
                        }
                    }
                }
            }
            if !found {
                break;
            }
        }
        out.push(blk);
    }
    out
}

fn overlaps(a0: f32, a1: f32, b0: f32, b1: f32) -> bool {
    a0 <= b1 && b0 <= a1
}

/// A square matrix of bits.
struct Bits {
    n: usize,
    words: usize,
    bits: Vec<u64>,
}

impl Bits {
    fn new(n: usize) -> Self {
        let words = n.div_ceil(64);
        Bits { n, words, bits: vec![0; n * words] }
    }
    fn set(&mut self, row: usize, col: usize) {
        self.bits[row * self.words + col / 64] |= 1 << (col % 64);
    }
    fn get(&self, row: usize, col: usize) -> bool {
        self.bits[row * self.words + col / 64] & (1 << (col % 64)) != 0
    }
    fn row(&self, row: usize) -> &[u64] {
        &self.bits[row * self.words..(row + 1) * self.words]
    }
    fn transposed(&self) -> Bits {
        let mut t = Bits::new(self.n);
        for r in 0..self.n {
            for c in 0..self.n {
                if self.get(r, c) {
                    t.set(c, r);
                }
            }
        }
        t
    }
}

/// Marks the cells of tables: a block, its nearest neighbours to the right and below, and the
/// block below that neighbour and right of the other, lined up in both directions (centres,
/// left or right edges within 0.7 em; centres, tops or bottoms within 0.5 em).
fn find_tables(blocks: &mut [Block]) {
    let n = blocks.len();
    let mut tables = 0;
    for i in 0..n {
        let b1 = &blocks[i];
        let (mut right, mut below, mut diagonal) = (None::<usize>, None::<usize>, None::<usize>);
        let (mut right_x, mut below_y, mut diag_x, mut diag_y) = (f32::MAX, f32::MAX, f32::MAX, f32::MAX);
        for (j, b) in blocks.iter().enumerate() {
            if j == i {
                continue;
            }
            if overlaps(b.top, b.bottom, b1.top, b1.bottom) && b.x0 > b1.x1 && b.x0 < right_x {
                (right, right_x) = (Some(j), b.x0);
            } else if overlaps(b.x0, b.x1, b1.x0, b1.x1) && b.top > b1.bottom && b.top < below_y {
                (below, below_y) = (Some(j), b.top);
            } else if b.x0 > b1.x1 && b.top > b1.bottom && b.x0 < diag_x && b.top < diag_y {
                (diagonal, diag_x, diag_y) = (Some(j), b.x0, b.top);
            }
        }
        let (Some(r), Some(d), Some(g)) = (right, below, diagonal) else { continue };
        let (b2, b3, b4) = (&blocks[r], &blocks[d], &blocks[g]);
        let x_overlap = |a: &Block, b: &Block| overlaps(a.x0, a.x1, b.x0, b.x1);
        let y_overlap = |a: &Block, b: &Block| overlaps(a.top, a.bottom, b.top, b.bottom);
        if x_overlap(b3, b4)
            || y_overlap(b2, b4)
            || x_overlap(b2, b3)
            || y_overlap(b2, b3)
            || !(x_overlap(b4, b2) && y_overlap(b4, b3))
        {
            continue;
        }
        let size = b1.size.min(b2.size).min(b3.size).min(b4.size);
        let (dx, dy) = (0.7 * size, 0.5 * size);
        let near = |a: f32, b: f32, d: f32| (a - b).abs() <= d;
        let xc = |b: &Block| (b.x0 + b.x1) / 2.0;
        let yc = |b: &Block| (b.top + b.bottom) / 2.0;
        let columns = (near(xc(b1), xc(b3), dx) && near(xc(b2), xc(b4), dx))
            || (near(b1.x0, b3.x0, dx) && near(b2.x0, b4.x0, dx))
            || (near(b1.x1, b3.x1, dx) && near(b2.x1, b4.x1, dx));
        let rows = (near(yc(b1), yc(b2), dy) && near(yc(b3), yc(b4), dy))
            || (near(b1.top, b2.top, dy) && near(b3.top, b4.top, dy))
            || (near(b1.bottom, b2.bottom, dy) && near(b3.bottom, b4.bottom, dy));
        if !(columns && rows) {
            continue;
        }
        let table = [i, r, d, g].iter().filter_map(|&k| blocks[k].table).max().unwrap_or_else(|| {
            tables += 1;
            tables - 1
        });
        for k in [i, r, d, g] {
            blocks[k].table = Some(table);
        }
    }
}

/// Orders blocks for reading; `rtl` for a page whose text runs right to left.
pub(super) fn order(mut blocks: Vec<Block>, rtl: bool) -> Vec<Block> {
    let n = blocks.len();
    if n > MAX_ORDERED_BLOCKS {
        blocks.sort_by(|a, b| a.top.total_cmp(&b.top).then(a.x0.total_cmp(&b.x0)));
        return blocks;
    }
    find_tables(&mut blocks);
    // widen each block to the blocks below it, up to its neighbours on either side
    for i in 0..n {
        blocks[i].etop = blocks[i].top;
        if blocks[i].table.is_some() {
            continue;
        }
        let (mut lo, mut hi) = (f32::MIN, f32::MAX);
        for (j, b) in blocks.iter().enumerate() {
            let a = &blocks[i];
            if i != j && overlaps(a.top, a.bottom, b.top, b.bottom) {
                if b.x0 > a.x1 {
                    hi = hi.min(b.x0);
                }
                if b.x1 < a.x0 {
                    lo = lo.max(b.x1);
                }
            }
        }
        let (mut ex0, mut ex1) = (blocks[i].x0, blocks[i].x1);
        for (j, b) in blocks.iter().enumerate() {
            if i != j && b.top >= blocks[i].bottom {
                if b.x1 > ex1 && b.x1 <= hi {
                    ex1 = b.x1;
                }
                if b.x0 < ex0 && b.x0 >= lo {
                    ex0 = b.x0;
                }
            }
        }
        (blocks[i].ex0, blocks[i].ex1) = (ex0, ex1);
    }
    // a table's cells compare with other blocks as the whole table
    let tables = blocks.iter().filter_map(|b| b.table).max().map_or(0, |t| t + 1);
    let mut envelopes = vec![(f32::MAX, f32::MIN, f32::MAX); tables];
    for b in &blocks {
        if let Some(t) = b.table {
            let e = &mut envelopes[t];
            *e = (e.0.min(b.x0), e.1.max(b.x1), e.2.min(b.top));
        }
    }
    for b in blocks.iter_mut() {
        if let Some(t) = b.table {
            (b.ex0, b.ex1, b.etop) = envelopes[t];
        }
    }
    // above[a][b]: a overlaps b horizontally and is above it
    let mut above = Bits::new(n);
    for (a, ba) in blocks.iter().enumerate() {
        for (b, bb) in blocks.iter().enumerate() {
            if overlaps(ba.ex0, ba.ex1, bb.ex0, bb.ex1) && ba.etop < bb.etop {
                above.set(a, b);
            }
        }
    }
    let below = above.transposed();
    let beside = |a: &Block, b: &Block| if rtl { b.ex1 <= a.ex0 } else { a.ex1 <= b.ex0 };
    // is block j read before block i? Above it, or beside it with nothing between (a block
    // below i and above j).
    let before = |j: usize, i: usize| {
        let (bj, bi) = (&blocks[j], &blocks[i]);
        if bj.table.is_some() && bj.table == bi.table {
            // cells of one table: row by row, each row in reading direction
            let same_row = overlaps(bj.top, bj.bottom, bi.top, bi.bottom);
            let first_in_row = if rtl { bj.x0 >= bi.x1 } else { bj.x1 <= bi.x0 };
            return (same_row && first_in_row) || bj.bottom <= bi.top;
        }
        above.get(j, i)
            || (beside(&blocks[j], &blocks[i])
                && !above.row(i).iter().zip(below.row(j)).any(|(under_i, over_j)| under_i & over_j != 0))
    };
    // depth first, without recursion: a block is read once everything before it is
    let mut state = vec![0u8; n]; // 0 new, 1 open, 2 read
    let mut sorted = Vec::with_capacity(n);
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        state[root] = 1;
        stack.push((root, 0));
        while let Some((i, next)) = stack.pop() {
            match (next..n).find(|&j| state[j] == 0 && before(j, i)) {
                Some(j) => {
                    stack.push((i, j + 1));
                    state[j] = 1;
                    stack.push((j, 0));
                }
                None => {
                    state[i] = 2;
                    sorted.push(i);
                }
            }
        }
    }
    let mut slots: Vec<Option<Block>> = blocks.into_iter().map(Some).collect();
    sorted.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// What separates two blocks read one after the other: a space between two one-line blocks on
/// the same baseline, a line break when the second continues the first's text just below it, a
/// paragraph break otherwise.
pub(super) fn separator(prev: &Block, next: &Block) -> &'static str {
    if let (Some(a), Some(b)) = (prev.single_line(), next.single_line())
        && (a - b).abs() < 0.3 * prev.size.min(next.size)
    {
        return " ";
    }
    let continues = next.top >= prev.bottom - 0.1 * prev.size
        && next.top - prev.bottom <= 2.5 * prev.size
        && overlaps(prev.x0, prev.x1, next.x0, next.x1);
    if continues { "\n" } else { "\n\n" }
}
