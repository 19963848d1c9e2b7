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
