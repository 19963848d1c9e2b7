//! From placed glyphs to text in reading order.
//!
//! Glyphs become words (runs without a gap), words grow into blocks which are put in reading
//! order (see [`order`]), and each block is read line by line. Lines whose letters are mostly
//! right-to-left are put back into logical order. Paragraphs (blank lines) are kept: chunking
//! cuts on them.

use super::{
    interp::Glyph,
    order::{self, Block},
};

#[derive(Clone, Debug)]
pub(super) struct Word {
    pub x0: f32,
    pub x1: f32,
    pub y: f32,
    pub size: f32,
    pub text: String,
    /// a space glyph came before it (a word break the content says, not only the geometry)
    pub after_space: bool,
}

/// Lays out one page. Glyphs of other orientations are read after the upright ones.
pub fn page_text(glyphs: &[Glyph]) -> String {
    let mut out = String::new();
    // a hostile matrix can place a glyph at infinity: such glyphs have no place on the page
    let placed = |g: &&Glyph| [g.x, g.y, g.width, g.size].iter().all(|v| v.is_finite() && v.abs() < 1e7);
    for quarter in 0..4u8 {
        let words = words(glyphs.iter().filter(placed).filter(|g| g.quarter == quarter), quarter);
        if words.is_empty() {
            continue;
        }
        let text = read_region(words);
        if !text.trim().is_empty() {
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(text.trim_end());
        }
    }
    out
}

/// Rotates page coordinates so that a glyph of the given orientation reads left to right.
fn upright(g: &Glyph, quarter: u8) -> (f32, f32) {
    match quarter {
        1 => (g.y, -g.x),
        2 => (-g.x, -g.y),
        3 => (-g.y, g.x),
        _ => (g.x, g.y),
    }
}

fn words<'g>(glyphs: impl Iterator<Item = &'g Glyph>, quarter: u8) -> Vec<Word> {
    let mut words: Vec<Word> = Vec::new();
    let mut current: Option<Word> = None;
    // a space glyph came after the current word's last glyph
    let mut spaced = false;
    for g in glyphs {
        let (x, y) = upright(g, quarter);
        let size = g.size.max(0.1);
        if g.space {
            spaced = current.is_some();
            continue;
        }
        let x1 = x + g.width;
        if let Some(w) = current.as_mut() {
            let same_line = (y - w.y).abs() < 0.35 * size.min(w.size);
            // continues to the right (normal), or to the left (right-to-left drawing)
            let gap_right = x - w.x1;
            let gap_left = w.x0 - x1;
            // A space glyph that does not advance is no word break: Persian and Arabic fonts draw
            // the zero-width non-joiner ("می‌شود") that way — between two letters of that
            // script it is kept, as U+200C — and some typesetters (groff) put a kerned-back
            // space inside a word ("hav e").
            let joiner = spaced
                && (joins_arabic(w.text.chars().last(), g.text.chars().next())
                    || joins_arabic(g.text.chars().last(), w.text.chars().next()));
            let tol = if spaced { 0.1 * size.min(w.size) } else { 0.12 * size.min(w.size).max(size * 0.5) };
            let mark = if joiner { "\u{200C}" } else { "" };
            if same_line && gap_right > -0.25 * size && gap_right < tol {
                w.x1 = w.x1.max(x1);
                w.text.push_str(mark);
                w.text.push_str(&g.text);
                spaced = false;
                continue;
            }
            if same_line && gap_left > -0.25 * size && gap_left < tol && gap_right < 0.0 {
                w.x0 = w.x0.min(x);
                w.text.insert_str(0, mark);
                w.text.insert_str(0, &g.text);
                spaced = false;
                continue;
            }
            words.push(current.take().expect("checked above"));
        }
        current = Some(Word { x0: x, x1: x1.max(x), y, size, text: g.text.clone(), after_space: spaced });
        spaced = false;
    }
    if let Some(w) = current {
        words.push(w);
    }
    words.retain(|w| !w.text.trim().is_empty());
    words
}

/// Two letters of the Arabic script, which a zero-width non-joiner may stand between.
fn joins_arabic(a: Option<char>, b: Option<char>) -> bool {
    let arabic =
        |c: char| c.is_alphabetic() && is_rtl_char(c) && !matches!(c as u32, 0x0590..=0x05FF | 0xFB1D..=0xFB4F);
    a.is_some_and(arabic) && b.is_some_and(arabic)
}

fn median(mut v: Vec<f32>) -> f32 {
    if v.is_empty() {
        return 10.0;
    }
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

fn read_region(words: Vec<Word>) -> String {
    let rtl = is_rtl(words.iter().map(|w| w.text.as_str()));
    if words.len() > order::MAX_BLOCK_WORDS {
        return read_block(&words, rtl);
    }
    let mut out = String::new();
    let mut prev: Option<Block> = None;
    for block in order::order(order::blocks(words), rtl) {
        let text = read_block(&block.words, rtl);
        if text.is_empty() {
            continue;
        }
        if let Some(p) = &prev {
            out.push_str(order::separator(p, &block));
        }
        out.push_str(&text);
        prev = Some(block);
    }
    out
}

/// A character of a right-to-left script. Digits are not: numbers read left to right in
/// Persian and Arabic text too.
fn is_rtl_char(c: char) -> bool {
    matches!(c as u32, 0x0590..=0x08FF | 0xFB1D..=0xFDFF | 0xFE70..=0xFEFF)
        && !matches!(c as u32, 0x0660..=0x0669 | 0x06F0..=0x06F9)
}

/// A character's direction: right to left (`Some(true)`), a left-to-right letter or any digit
/// (`Some(false)`), or neutral (spaces, punctuation: `None`).
fn direction(c: char) -> Option<bool> {
    if is_rtl_char(c) { Some(true) } else { c.is_alphanumeric().then_some(false) }
}

fn is_rtl<'s>(texts: impl Iterator<Item = &'s str>) -> bool {
    let (mut rtl, mut ltr) = (0usize, 0usize);
    for t in texts {
        for c in t.chars() {
            if c.is_alphabetic() {
                if is_rtl_char(c) {
                    rtl += 1;
                } else {
                    ltr += 1;
                }
            }
        }
    }
    rtl > ltr
}

fn read_block(words: &[Word], rtl_page: bool) -> String {
    if words.is_empty() {
        return String::new();
    }
    let mut words = words.to_vec();
    let em = median(words.iter().map(|w| w.size).collect());
    words.sort_by(|a, b| b.y.total_cmp(&a.y));
    // group into lines by baseline
    let mut lines: Vec<Vec<Word>> = Vec::new();
    for w in words {
        match lines.last_mut() {
            Some(line) if (line[0].y - w.y).abs() < 0.5 * em.min(w.size.max(0.1)).max(em * 0.5) => line.push(w),
            _ => lines.push(vec![w]),
        }
    }
    let pitches: Vec<f32> = lines.windows(2).map(|p| p[0][0].y - p[1][0].y).filter(|d| *d > 0.0).collect();
    let pitch = median(pitches).max(em);
    let mut out = String::new();
    let mut prev_y: Option<f32> = None;
    for mut line in lines {
        let y = line[0].y;
        if let Some(py) = prev_y {
            out.push('\n');
            if py - y > 1.6 * pitch {
                out.push('\n');
            }
        }
        prev_y = Some(y);
        line.sort_by(|a, b| a.x0.total_cmp(&b.x0));
        out.push_str(&line_text(&line, rtl_page));
    }
    out
}

/// Joins a line's words, left to right on the page; a mostly right-to-left line is then put into
/// logical order: its runs are reversed, and so are the letters of its right-to-left runs.
fn line_text(line: &[Word], rtl_page: bool) -> String {
    let visual = {
        let mut s = String::new();
        for (i, w) in line.iter().enumerate() {
            // Pieces that touch are one word although they were cut apart by a change of size or
            // baseline or by a kern back over the previous letter (the raised, smaller A of the
            // LaTeX logo); a space glyph that words() did not join across separates.
            let touches = i > 0 && !w.after_space && w.x0 - line[i - 1].x1 < 0.1 * w.size.min(line[i - 1].size);
            if i > 0 && !touches {
                s.push(' ');
            }
            s.push_str(&w.text);
        }
        s
    };
    // a line reads right to left when most of its letters do, or, on a right-to-left page,
    // when it begins (at its right end) with a right-to-left letter
    let begins_rtl = || visual.chars().rev().find(|c| c.is_alphabetic()).is_some_and(is_rtl_char);
    if !(is_rtl(line.iter().map(|w| w.text.as_str())) || (rtl_page && begins_rtl())) {
        return embedded_rtl_in_logical_order(&visual);
    }
    // Split the visual string into runs of RTL and non-RTL characters (neutrals such as spaces
    // and punctuation go with the surrounding RTL text unless between two LTR letters).
    let chars: Vec<char> = visual.chars().collect();
    let strong: Vec<Option<bool>> = chars.iter().map(|&c| direction(c)).collect();
    let mut kinds = vec![true; chars.len()];
    for i in 0..chars.len() {
        kinds[i] = match strong[i] {
            Some(k) => k,
            None => {
                // A neutral inside a word goes with that word's letters when they all run one way
                // (the backslash of `\section`, the dollars of `$x$`); otherwise it reads
                // left to right only between two left-to-right letters.
                let word = if chars[i].is_whitespace() {
                    None
                } else {
                    let start = chars[..i].iter().rposition(|c| c.is_whitespace()).map_or(0, |p| p + 1);
                    let end = chars[i..].iter().position(|c| c.is_whitespace()).map_or(chars.len(), |p| i + p);
                    let mut letters = strong[start..end].iter().flatten();
                    letters.next().copied().filter(|first| letters.all(|k| k == first))
                };
                word.unwrap_or_else(|| {
                    let before = strong[..i].iter().rev().find_map(|s| *s);
                    let after = strong[i + 1..].iter().find_map(|s| *s);
                    !(before == Some(false) && after == Some(false))
                })
            }
        };
    }
    let mut runs: Vec<(bool, String)> = Vec::new();
    for (c, k) in chars.into_iter().zip(kinds) {
        match runs.last_mut() {
            Some((kind, s)) if *kind == k => s.push(c),
            _ => runs.push((k, c.to_string())),
        }
    }
    runs.reverse();
    runs.into_iter().map(|(rtl, s)| if rtl { s.chars().rev().collect() } else { s }).collect()
}

/// A left-to-right line with right-to-left words in it: the letters of each right-to-left run
/// (with the spaces and punctuation between its words) are put into logical order; the runs stay
/// where they are.
fn embedded_rtl_in_logical_order(visual: &str) -> String {
    if !visual.chars().any(is_rtl_char) {
        return visual.to_owned();
    }
    let chars: Vec<char> = visual.chars().collect();
    let strong: Vec<Option<bool>> = chars.iter().map(|&c| direction(c)).collect();
    let mut out = String::with_capacity(visual.len());
    let mut i = 0;
    while i < chars.len() {
        if strong[i] != Some(true) {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // the run reaches the last right-to-left letter before the next left-to-right one
        let mut end = i + 1;
        let mut j = i + 1;
        while j < chars.len() && strong[j] != Some(false) {
            if strong[j] == Some(true) {
                end = j + 1;
            }
            j += 1;
        }
        out.extend(chars[i..end].iter().rev());
        i = end;
    }
    out
}

#[cfg(test)]
mod tests;
