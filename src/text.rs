//! Text normalisation shared by extraction, search and evaluation.

use unicode_normalization::UnicodeNormalization;

/// Bidirectional control marks: they carry no text and break matching.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A control character that carries no text: everything but line breaks and tabs (a broken
/// ToUnicode map can yield NUL, which Postgres text cannot hold).
pub fn is_stray_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\n' | '\t')
}

/// NFKC (Persian and Arabic presentation forms become base letters, ligatures split), without
/// bidi controls or other control characters, with words hyphenated across lines joined, and runs
/// of spaces collapsed. Line breaks and blank lines (paragraphs) are kept.
pub fn normalize_page(raw: &str) -> String {
    let nfkc: String = raw
        .nfkc()
        .filter(|c| !is_bidi_control(*c) && !is_stray_control(*c) && *c != '\u{FEFF}' && *c != '\u{AD}')
        .collect();
    let lines: Vec<String> = nfkc.split('\n').map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    let mut out = String::with_capacity(nfkc.len());
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        // "exam-" + "ple" -> "example" when the next line goes on in lower case
        if let Some(stem) = line.strip_suffix('-')
            && stem.chars().last().is_some_and(char::is_alphabetic)
            && let Some(next) = lines.get(i + 1)
            && next.chars().next().is_some_and(char::is_lowercase)
        {
            let (head, rest) = next.split_once(' ').unwrap_or((next.as_str(), ""));
            out.push_str(stem);
            out.push_str(head);
            if !rest.is_empty() {
                out.push('\n');
                out.push_str(rest);
            }
            out.push('\n');
            i += 2;
            continue;
        }
        out.push_str(line);
        out.push('\n');
        i += 1;
    }
    // at most one blank line in a row, none at the ends
    let mut collapsed = String::with_capacity(out.len());
    let mut blank_run = 0;
    for line in out.split('\n') {
        if line.is_empty() {
            blank_run += 1;
            continue;
        }
        if !collapsed.is_empty() {
            collapsed.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        collapsed.push_str(line);
    }
    collapsed
}

/// The comparison form used by the extraction evaluation: NFKC, no bidi controls, all whitespace
/// collapsed to single spaces.
pub fn for_comparison(text: &str) -> String {
    let nfkc: String = text.nfkc().filter(|c| !is_bidi_control(*c)).collect();
    nfkc.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presentation_forms_and_bidi_marks() {
        // "سلام" written with presentation forms and wrapped in RLE/PDF marks
        let raw = "\u{202B}\u{FEB3}\u{FEFC}\u{FEE1}\u{202C}";
        assert_eq!(normalize_page(raw), "سلام");
        assert_eq!(normalize_page("ﬁnd the ﬂow"), "find the flow");
    }

    #[test]
    fn hyphenation_lines_and_paragraphs() {
        let raw = "A long exam-\nple of text   with  spaces\n\n\n\nNext para-\nGraph keeps case";
        assert_eq!(normalize_page(raw), "A long example\nof text with spaces\n\nNext para-\nGraph keeps case");
    }

    #[test]
    fn control_characters_are_dropped() {
        assert_eq!(normalize_page("a\u{0}b\u{7}c\r\nnext\tline"), "abc\nnext line");
    }

    #[test]
    fn comparison_form() {
        assert_eq!(for_comparison(" a\n\n b\u{200F}\tc "), "a b c");
    }
}
