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
mod tests {
    use super::*;

    fn glyphs(text: &str, x: f32, y: f32, size: f32) -> Vec<Glyph> {
        let mut out = Vec::new();
        let mut cx = x;
        for c in text.chars() {
            let width = 0.5 * size;
            out.push(Glyph { x: cx, y, width, size, quarter: 0, text: c.to_string(), space: c == ' ' });
            cx += width;
        }
        out
    }

    #[test]
    fn lines_and_paragraphs_keep_their_breaks() {
        let mut g = glyphs("First line of text", 50.0, 700.0, 10.0);
        g.extend(glyphs("second line here", 50.0, 688.0, 10.0));
        g.extend(glyphs("New paragraph", 50.0, 640.0, 10.0));
        assert_eq!(page_text(&g), "First line of text\nsecond line here\n\nNew paragraph");
    }

    #[test]
    fn two_columns_are_read_one_after_the_other() {
        let mut g = Vec::new();
        for i in 0..5 {
            let y = 700.0 - 12.0 * i as f32;
            g.extend(glyphs(&format!("left {i}"), 50.0, y, 10.0));
            g.extend(glyphs(&format!("right {i}"), 320.0, y, 10.0));
        }
        let text = page_text(&g);
        let expected: Vec<String> =
            (0..5).map(|i| format!("left {i}")).chain((0..5).map(|i| format!("right {i}"))).collect();
        let got: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_title_over_two_columns_comes_first() {
        let mut g = glyphs("A Title Across The Page", 150.0, 760.0, 16.0);
        for i in 0..4 {
            let y = 700.0 - 12.0 * i as f32;
            g.extend(glyphs(&format!("alpha {i}"), 50.0, y, 10.0));
            g.extend(glyphs(&format!("omega {i}"), 320.0, y, 10.0));
        }
        let text = page_text(&g);
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], "A Title Across The Page");
        assert_eq!(lines[1], "alpha 0");
        assert_eq!(lines[5], "omega 0");
    }

    #[test]
    fn each_column_is_read_under_its_own_heading() {
        // the right column's heading stands lower than the left one's: no grid, two columns
        let mut g = glyphs("Left heading", 50.0, 730.0, 10.0);
        for i in 0..6 {
            let y = 712.0 - 12.0 * i as f32;
            g.extend(glyphs(&format!("alpha {i}"), 50.0, y, 10.0));
            if i > 1 {
                g.extend(glyphs(&format!("omega {i}"), 320.0, y, 10.0));
            }
        }
        g.extend(glyphs("Right heading", 320.0, 700.0, 10.0));
        let text = page_text(&g);
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[..3], ["Left heading", "alpha 0", "alpha 1"]);
        assert_eq!(lines[7..9], ["Right heading", "omega 2"]);
    }

    #[test]
    fn a_table_is_read_row_by_row() {
        // symbols and their commands, three rows far enough apart to be blocks of their own
        let rows = [("≤", "\\leq"), ("≥", "\\geq"), ("≠", "\\neq")];
        let mut g = glyphs("Relations", 50.0, 760.0, 10.0);
        for (i, (symbol, command)) in rows.iter().enumerate() {
            let y = 730.0 - 20.0 * i as f32;
            g.extend(glyphs(symbol, 60.0, y, 10.0));
            g.extend(glyphs(command, 120.0, y, 10.0));
        }
        g.extend(glyphs("After the table.", 50.0, 650.0, 10.0));
        let text = page_text(&g);
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(words, ["Relations", "≤", "\\leq", "≥", "\\geq", "≠", "\\neq", "After", "the", "table."]);
    }

    #[test]
    fn glyphs_placed_at_infinity_are_left_out() {
        let mut g = glyphs("Plain text here", 50.0, 700.0, 10.0);
        for (x, y, size) in
            [(f32::NAN, 700.0, 10.0), (60.0, f32::INFINITY, 10.0), (1e30, 1e30, 1e30), (70.0, 690.0, f32::NAN)]
        {
            g.push(Glyph { x, y, width: 5.0, size, quarter: 0, text: "x".into(), space: false });
        }
        assert_eq!(page_text(&g), "Plain text here");
    }

    #[test]
    fn a_page_of_scattered_words_is_read_whole() {
        // single words far apart: every one a block of its own, too many to order; then more
        // words than blocks are grown from
        for (rows, cols) in [(40, 50), (100, 60)] {
            let mut g = Vec::new();
            for r in 0..rows {
                for c in 0..cols {
                    g.extend(glyphs(&format!("w{r}x{c}"), 10.0 + 40.0 * c as f32, 800.0 - 8.0 * r as f32, 4.0));
                }
            }
            let text = page_text(&g);
            let words: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(words.len(), rows * cols);
            // top to bottom, left to right
            assert_eq!(words[0], "w0x0");
            assert_eq!(words[1], "w0x1");
            assert_eq!(words[cols], "w1x0");
        }
    }

    #[test]
    fn rtl_lines_come_out_in_logical_order() {
        // "سلام دنیا" drawn visually: the last word leftmost, each word's letters reversed
        let mut g = glyphs("ایند", 100.0, 700.0, 10.0);
        g.extend(glyphs("مالس", 125.0, 700.0, 10.0));
        assert_eq!(page_text(&g), "سلام دنیا");
    }

    #[test]
    fn on_a_rtl_page_a_line_that_begins_with_a_rtl_word_reads_right_to_left() {
        // "سلام دنیا" over "بستۀ Verbatim", both drawn visually; the second line has more Latin
        // letters than Persian ones, but begins (at its right end) with a Persian word
        let mut g = glyphs("ایند", 100.0, 712.0, 10.0);
        g.extend(glyphs("مالس", 125.0, 712.0, 10.0));
        g.extend(glyphs("Verbatim", 100.0, 700.0, 10.0));
        g.extend(glyphs("ۀتسب", 145.0, 700.0, 10.0));
        assert_eq!(page_text(&g), "سلام دنیا\nبستۀ Verbatim");
        // on a left-to-right page the line reads left to right, the Persian word in logical order
        let mut g = glyphs("Some English text above it", 100.0, 712.0, 10.0);
        g.extend(glyphs("Verbatim", 100.0, 700.0, 10.0));
        g.extend(glyphs("ۀتسب", 145.0, 700.0, 10.0));
        assert_eq!(page_text(&g), "Some English text above it\nVerbatim بستۀ");
        // two Persian words in an English line: one run, read right to left
        let mut g = glyphs("See ایند مالس here and there in this line", 100.0, 700.0, 10.0);
        g.extend(glyphs("Another English line of text", 100.0, 712.0, 10.0));
        assert_eq!(page_text(&g), "Another English line of text\nSee سلام دنیا here and there in this line");
    }

    #[test]
    fn numbers_in_rtl_lines_read_left_to_right() {
        // "صفحه ۱۲۳" drawn visually: the number leftmost, its digits in reading order
        let mut g = glyphs("۱۲۳", 100.0, 700.0, 10.0);
        g.extend(glyphs("هحفص", 125.0, 700.0, 10.0));
        assert_eq!(page_text(&g), "صفحه ۱۲۳");
        // a line without right-to-left letters stays as drawn
        assert_eq!(page_text(&glyphs("۱۱۵ ،۱۰۱ ،\\rule", 100.0, 700.0, 10.0)), "۱۱۵ ،۱۰۱ ،\\rule");
    }

    #[test]
    fn punctuation_inside_a_latin_word_stays_with_it_in_rtl_lines() {
        // logical: "از \section استفاده" drawn visually: "هدافتسا \section زا"
        let g = glyphs("هدافتسا \\section زا", 100.0, 700.0, 10.0);
        assert_eq!(page_text(&g), "از \\section استفاده");
    }

    #[test]
    fn a_space_glyph_that_does_not_advance_between_persian_letters_is_a_non_joiner() {
        // "کتاب‌ها" drawn visually: "اه", a space glyph with no advance, "باتک"
        let mut g = glyphs("اه", 100.0, 700.0, 10.0);
        let x = g.last().map(|l| l.x + l.width).unwrap_or_default();
        g.push(Glyph { x, y: 700.0, width: 2.0, size: 10.0, quarter: 0, text: " ".into(), space: true });
        g.extend(glyphs("باتک", x, 700.0, 10.0));
        assert_eq!(page_text(&g), "کتاب\u{200C}ها");
        // a real gap stays a space
        let mut g = glyphs("اه", 100.0, 700.0, 10.0);
        g.push(Glyph { x: 110.0, y: 700.0, width: 2.5, size: 10.0, quarter: 0, text: " ".into(), space: true });
        g.extend(glyphs("باتک", 112.5, 700.0, 10.0));
        assert_eq!(page_text(&g), "کتاب ها");
    }

    #[test]
    fn pieces_that_touch_are_one_word() {
        // the LaTeX logo as TeX draws it: a smaller, raised A kerned back over the L, a lowered E
        let g = |text: &str, x: f32, y: f32, width: f32, size: f32| Glyph {
            x,
            y,
            width,
            size,
            quarter: 0,
            text: text.into(),
            space: false,
        };
        let mut glyphs = vec![
            g("L", 169.6, 557.0, 6.8, 10.9),
            g("A", 172.5, 558.7, 6.0, 8.0),
            g("T", 176.9, 557.0, 7.9, 10.9),
            g("E", 182.9, 554.7, 7.4, 10.9),
            g("X", 189.0, 557.0, 8.2, 10.9),
        ];
        glyphs.push(Glyph { x: 197.2, y: 557.0, width: 3.6, size: 10.9, quarter: 0, text: " ".into(), space: true });
        glyphs.push(g("is", 200.8, 557.0, 7.0, 10.9));
        assert_eq!(page_text(&glyphs), "LATEX is");
        // a space glyph kerned back inside a word (groff's "hav e") is no break; one that
        // advances is
        let mut glyphs = vec![g("hav", 104.2, 479.4, 14.8, 10.0)];
        glyphs.push(Glyph { x: 119.0, y: 479.4, width: 2.7, size: 10.0, quarter: 0, text: " ".into(), space: true });
        glyphs.push(g("e", 119.0, 479.4, 4.4, 10.0));
        glyphs.push(Glyph { x: 123.4, y: 479.4, width: 2.7, size: 10.0, quarter: 0, text: " ".into(), space: true });
        glyphs.push(g("kept", 126.1, 479.4, 17.0, 10.0));
        assert_eq!(page_text(&glyphs), "have kept");
    }

    #[test]
    fn rtl_with_embedded_latin_keeps_the_latin_forwards() {
        // logical: "نسخه LaTeX جدید" drawn visually left to right: "دیدج LaTeX هخسن"
        let g = glyphs("دیدج LaTeX هخسن", 100.0, 700.0, 10.0);
        assert_eq!(page_text(&g), "نسخه LaTeX جدید");
    }
}
