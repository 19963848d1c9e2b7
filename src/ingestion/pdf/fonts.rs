//! What the extractor needs of a PDF font: how to cut a shown string into character codes, the
//! Unicode text of each code, and each glyph's advance width.
//!
//! Unicode comes from the font's `ToUnicode` CMap first (the most reliable source), then from its
//! `Encoding` (base encoding with `Differences`, decoded by lopdf's glyph tables).

use std::{borrow::Cow, collections::HashMap};

use lopdf::{Dictionary, Document, Encoding, Object};

/// Upper bound on a CMap stream we are willing to parse.
const MAX_CMAP_BYTES: usize = 4 << 20;
/// Font programs read for their built-in encodings.
const MAX_FONT_PROGRAM_BYTES: usize = 4 * MAX_CMAP_BYTES;
/// Code → text entries one CMap may define, counting every code of every range: Adobe's
/// collections hold about 20,000, a two-byte identity range 65,536. Entries past it are ignored,
/// so ranges repeated thousands of times cost no more than this.
const MAX_CMAP_ENTRIES: usize = 1 << 20;
/// Widths one `/W` array may set, counting every code of every range.
const MAX_WIDTH_ENTRIES: usize = 1 << 20;

pub struct Font<'a> {
    /// Type0 (composite) fonts use two-byte codes (Identity-H and the usual CMaps).
    two_byte: bool,
    to_unicode: Option<Cow<'static, HashMap<u32, String>>>,
    encoding: Option<Encoding<'a>>,
    /// code → text from the font program's own encoding
    builtin: Option<Builtin>,
    widths: Widths,
    /// text-space units per glyph-space unit (1/1000, or from a Type3 FontMatrix)
    scale: f32,
}

struct Builtin {
    map: HashMap<u32, String>,
    /// A Type1 program's encoding is the whole of it; a CFF program's map holds only the glyphs
    /// with names of their own, and the standard encoding answers for the rest.
    whole: bool,
}

enum Widths {
    Simple { first: u32, widths: Vec<f32>, missing: f32 },
    Cid { map: HashMap<u32, f32>, default: f32 },
}

impl<'a> Font<'a> {
    pub fn load(doc: &'a Document, dict: &'a Dictionary) -> Self {
        let subtype = dict.get(b"Subtype").and_then(Object::as_name).unwrap_or(b"");
        let two_byte = subtype == b"Type0";
        let mut to_unicode = dict
            .get(b"ToUnicode")
            .ok()
            .and_then(|o| deref(doc, o))
            .and_then(|o| o.as_stream().ok())
            .and_then(|s| {
                // inflated only up to the cap: a small stream cannot grow into gigabytes
                let data = if s.dict.get(b"Filter").is_ok() {
                    s.decompressed_content_with_limit(MAX_CMAP_BYTES).ok()?
                } else {
                    s.content.clone()
                };
                (data.len() <= MAX_CMAP_BYTES).then(|| parse_cmap(&data))
            })
            .filter(|m| !m.is_empty())
            .map(Cow::Owned);
        if two_byte && to_unicode.is_none() {
            to_unicode = collection_map(doc, dict).map(Cow::Borrowed);
        }
        // lopdf's encoding handling covers base encodings and Differences for simple fonts
        // (lopdf reads the ToUnicode stream too when there is no /Encoding: only up to the cap)
        let encoding = if two_byte { None } else { dict.get_font_encoding_with_limit(doc, MAX_CMAP_BYTES).ok() };
        // a Type1 font without /Encoding uses the encoding built into its program
        let builtin = if two_byte || to_unicode.is_some() || dict.get(b"Encoding").is_ok() {
            None
        } else {
            builtin_encoding(doc, dict)
        };

        let scale = if subtype == b"Type3" {
            dict.get(b"FontMatrix")
                .ok()
                .and_then(|o| deref(doc, o))
                .and_then(|o| o.as_array().ok())
                .and_then(|a| a.first())
                .and_then(num)
                .map(|v| v.abs())
                .filter(|v| *v > 0.0)
                .unwrap_or(0.001)
        } else {
            0.001
        };

        let widths = if two_byte { cid_widths(doc, dict) } else { simple_widths(doc, dict) };
        Self { two_byte, to_unicode, encoding, builtin, widths, scale }
    }

    /// Cuts a string operand into character codes.
    pub fn codes(&self, bytes: &[u8]) -> Vec<u32> {
        if self.two_byte {
            bytes
                .chunks(2)
                .map(|c| if c.len() == 2 { u32::from(c[0]) << 8 | u32::from(c[1]) } else { u32::from(c[0]) })
                .collect()
        } else {
            bytes.iter().map(|b| u32::from(*b)).collect()
        }
    }

    /// Whether word spacing (`Tw`) applies: only to the single-byte code 32.
    pub fn is_space_code(&self, code: u32) -> bool {
        !self.two_byte && code == 32
    }

    pub fn text(&self, code: u32) -> Option<String> {
        if let Some(map) = &self.to_unicode
            && let Some(s) = map.get(&code)
        {
            return Some(s.clone());
        }
        if let Some(builtin) = &self.builtin {
            let text = builtin.map.get(&code).cloned();
            if text.is_some() || builtin.whole {
                return text;
            }
        }
        let encoding = self.encoding.as_ref()?;
        let byte = u8::try_from(code).ok()?;
        let s = encoding.bytes_to_string(&[byte]).ok()?;
        // lopdf yields U+FFFD or nothing for unmapped codes
        (!s.is_empty() && !s.contains('\u{FFFD}')).then_some(s)
    }

    /// Advance of the glyph in text-space units (before the font size is applied).
    pub fn advance(&self, code: u32) -> f32 {
        let w = match &self.widths {
            Widths::Simple { first, widths, missing } => {
                code.checked_sub(*first).and_then(|i| widths.get(i as usize)).copied().unwrap_or(*missing)
            }
            Widths::Cid { map, default } => map.get(&code).copied().unwrap_or(*default),
        };
        w * self.scale
    }
}

fn deref<'a>(doc: &'a Document, o: &'a Object) -> Option<&'a Object> {
    doc.dereference(o).ok().map(|(_, o)| o)
}

fn num(o: &Object) -> Option<f32> {
    match o {
        Object::Integer(i) => Some(*i as f32),
        Object::Real(r) => Some(*r),
        _ => None,
    }
}

/// For a CID-keyed font with an Identity encoding and no ToUnicode map, Adobe's CID → Unicode
/// map of the font's character collection (Chinese, Japanese, Korean).
fn collection_map(doc: &Document, dict: &Dictionary) -> Option<&'static HashMap<u32, String>> {
    static MAPS: std::sync::OnceLock<Vec<(&'static str, HashMap<u32, String>)>> = std::sync::OnceLock::new();
    let encoding = dict.get(b"Encoding").ok().and_then(|o| o.as_name().ok())?;
    if encoding != b"Identity-H" && encoding != b"Identity-V" {
        return None;
    }
    let descendant = descendant_font(doc, dict)?;
    let info = descendant.get(b"CIDSystemInfo").ok().and_then(|o| deref(doc, o)).and_then(|o| o.as_dict().ok())?;
    let ordering = info.get(b"Ordering").ok().and_then(|o| o.as_str().ok())?;
    let ordering = std::str::from_utf8(ordering).ok()?;
    let maps = MAPS.get_or_init(|| {
        vec![
            ("GB1", parse_cmap(include_bytes!("cmaps/Adobe-GB1-UCS2"))),
            ("Japan1", parse_cmap(include_bytes!("cmaps/Adobe-Japan1-UCS2"))),
            ("CNS1", parse_cmap(include_bytes!("cmaps/Adobe-CNS1-UCS2"))),
            ("Korea1", parse_cmap(include_bytes!("cmaps/Adobe-Korea1-UCS2"))),
        ]
    });
    maps.iter().find(|(name, _)| *name == ordering).map(|(_, map)| map)
}

/// The code → text map of a font program's built-in encoding, if it has one: a Type1 program
/// (`FontFile`) or a CFF one (`FontFile3` of subtype Type1C).
fn builtin_encoding(doc: &Document, dict: &Dictionary) -> Option<Builtin> {
    let descriptor = dict.get(b"FontDescriptor").ok().and_then(|o| deref(doc, o)).and_then(|o| o.as_dict().ok())?;
    let stream = |key: &[u8]| descriptor.get(key).ok().and_then(|o| deref(doc, o)).and_then(|o| o.as_stream().ok());
    let content = |program: &lopdf::Stream| {
        let data = if program.dict.get(b"Filter").is_ok() {
            program.decompressed_content_with_limit(MAX_FONT_PROGRAM_BYTES).ok()?
        } else {
            program.content.clone()
        };
        (data.len() <= MAX_FONT_PROGRAM_BYTES).then_some(data)
    };
    let (entries, whole) = if let Some(program) = stream(b"FontFile") {
        let data = content(program)?;
        let clear_len = program
            .dict
            .get(b"Length1")
            .ok()
            .and_then(num)
            .map_or(data.len(), |l| (l.max(0.0) as usize).min(data.len()));
        (super::glyphs::type1_encoding(&data[..clear_len])?, true)
    } else {
        let program = stream(b"FontFile3")?;
        if program.dict.get(b"Subtype").and_then(Object::as_name).ok() != Some(b"Type1C".as_slice()) {
            return None;
        }
        (super::glyphs::cff_encoding(&content(program)?)?, false)
    };
    let map: HashMap<u32, String> = entries
        .into_iter()
        .filter_map(|(code, name)| super::glyphs::to_unicode(&name).map(|t| (u32::from(code), t)))
        .collect();
    (!map.is_empty()).then_some(Builtin { map, whole })
}

fn simple_widths(doc: &Document, dict: &Dictionary) -> Widths {
    let first = dict.get(b"FirstChar").ok().and_then(num).unwrap_or(0.0).max(0.0) as u32;
    let widths: Vec<f32> = dict
        .get(b"Widths")
        .ok()
        .and_then(|o| deref(doc, o))
        .and_then(|o| o.as_array().ok())
        .map(|a| a.iter().map(|w| deref(doc, w).and_then(num).unwrap_or(0.0)).collect())
        .unwrap_or_default();
    let missing = dict
        .get(b"FontDescriptor")
        .ok()
        .and_then(|o| deref(doc, o))
        .and_then(|o| o.as_dict().ok())
        .and_then(|d| d.get(b"MissingWidth").ok().and_then(num))
        // the standard 14 fonts come without widths: half an em is a fair average
        .unwrap_or(if widths.is_empty() { 500.0 } else { 0.0 });
    Widths::Simple { first, widths, missing }
}

/// The CIDFont of a Type0 font.
fn descendant_font<'a>(doc: &'a Document, dict: &'a Dictionary) -> Option<&'a Dictionary> {
    dict.get(b"DescendantFonts")
        .ok()
        .and_then(|o| deref(doc, o))
        .and_then(|o| o.as_array().ok())
        .and_then(|a| a.first())
        .and_then(|o| deref(doc, o))
        .and_then(|o| o.as_dict().ok())
}

fn cid_widths(doc: &Document, dict: &Dictionary) -> Widths {
    let descendant = descendant_font(doc, dict);
    let Some(cid) = descendant else { return Widths::Cid { map: HashMap::new(), default: 1000.0 } };
    let default = cid.get(b"DW").ok().and_then(num).unwrap_or(1000.0);
    let mut map = HashMap::new();
    // every width the array sets counts, across all its ranges: a few megabytes of ranges
    // repeated could otherwise ask for billions of entries
    let mut budget = MAX_WIDTH_ENTRIES;
    if let Some(w) = cid.get(b"W").ok().and_then(|o| deref(doc, o)).and_then(|o| o.as_array().ok()) {
        let mut i = 0;
        while i < w.len() && budget > 0 {
            let Some(start) = deref(doc, &w[i]).and_then(num) else { break };
            let start = start as u32;
            match w.get(i + 1).and_then(|o| deref(doc, o)) {
                Some(Object::Array(list)) => {
                    for (k, v) in list.iter().enumerate().take(budget) {
                        if map.len() > 70_000 {
                            break;
                        }
                        map.insert(start.saturating_add(k as u32), deref(doc, v).and_then(num).unwrap_or(default));
                    }
                    budget = budget.saturating_sub(list.len());
                    i += 2;
                }
                Some(end) => {
                    let end = num(end).map_or(start, |e| e as u32);
                    let width = w.get(i + 2).and_then(|o| deref(doc, o)).and_then(num).unwrap_or(default);
                    let last = end.min(start.saturating_add(70_000)).min(start.saturating_add(budget as u32 - 1));
                    for c in start..=last {
                        map.insert(c, width);
                    }
                    budget = budget.saturating_sub(last.saturating_sub(start) as usize + 1);
                    i += 3;
                }
                None => break,
            }
        }
    }
    Widths::Cid { map, default }
}

/// Parses the `bfchar` and `bfrange` sections of a ToUnicode CMap.
pub fn parse_cmap(data: &[u8]) -> HashMap<u32, String> {
    let tokens = tokenize(data);
    let mut map = HashMap::new();
    let mut budget = MAX_CMAP_ENTRIES;
    let mut i = 0;
    while i < tokens.len() && budget > 0 {
        match &tokens[i] {
            Token::Keyword(k) if k == b"beginbfchar" => {
                i += 1;
                while i + 1 < tokens.len() && budget > 0 {
                    match (&tokens[i], &tokens[i + 1]) {
                        (Token::Hex(src), Token::Hex(dst)) => {
                            if let Some(s) = utf16(dst) {
                                map.insert(code_of(src), s);
                            }
                            budget = budget.saturating_sub(1);
                            i += 2;
                        }
                        _ => break,
                    }
                }
            }
            Token::Keyword(k) if k == b"beginbfrange" => {
                i += 1;
                while i + 2 < tokens.len() && budget > 0 {
                    let (Token::Hex(lo), Token::Hex(hi)) = (&tokens[i], &tokens[i + 1]) else { break };
                    let (lo, hi) = (code_of(lo), code_of(hi));
                    let hi = hi.min(lo.saturating_add(0xFFFF)).min(lo.saturating_add(budget as u32 - 1));
                    budget = budget.saturating_sub(hi.saturating_sub(lo) as usize + 1);
                    match &tokens[i + 2] {
                        Token::Hex(dst) => {
                            if let Some(base) = units(dst) {
                                for (k, code) in (lo..=hi).enumerate() {
                                    // the last UTF-16 unit increments along the range
                                    let mut u = base.clone();
                                    if let Some(last) = u.last_mut() {
                                        *last = last.wrapping_add(k as u16);
                                    }
                                    if let Ok(s) = String::from_utf16(&u) {
                                        map.insert(code, s);
                                    }
                                }
                            }
                            i += 3;
                        }
                        Token::ArrayStart => {
                            let mut j = i + 3;
                            let mut code = lo;
                            while j < tokens.len() {
                                match &tokens[j] {
                                    Token::Hex(dst) => {
                                        if code <= hi
                                            && let Some(s) = utf16(dst)
                                        {
                                            map.insert(code, s);
                                        }
                                        budget = budget.saturating_sub(1);
                                        code = code.saturating_add(1);
                                        j += 1;
                                    }
                                    Token::ArrayEnd => {
                                        j += 1;
                                        break;
                                    }
                                    _ => j += 1,
                                }
                            }
                            i = j;
                        }
                        _ => break,
                    }
                }
            }
            _ => i += 1,
        }
    }
    map
}

fn code_of(bytes: &[u8]) -> u32 {
    bytes.iter().take(4).fold(0u32, |acc, b| acc << 8 | u32::from(*b))
}

fn units(bytes: &[u8]) -> Option<Vec<u16>> {
    if bytes.is_empty() {
        return None;
    }
    if bytes.len() == 1 {
        return Some(vec![u16::from(bytes[0])]);
    }
    Some(
        bytes
            .chunks(2)
            .map(|c| if c.len() == 2 { u16::from(c[0]) << 8 | u16::from(c[1]) } else { u16::from(c[0]) })
            .collect(),
    )
}

fn utf16(bytes: &[u8]) -> Option<String> {
    String::from_utf16(&units(bytes)?).ok()
}

#[derive(Debug)]
enum Token {
    Hex(Vec<u8>),
    Keyword(Vec<u8>),
    ArrayStart,
    ArrayEnd,
    Other,
}

fn tokenize(data: &[u8]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let c = data[i];
        match c {
            b'%' => {
                while i < data.len() && data[i] != b'\n' && data[i] != b'\r' {
                    i += 1;
                }
            }
            b'<' if data.get(i + 1) == Some(&b'<') => {
                out.push(Token::Other);
                i += 2;
            }
            b'>' if data.get(i + 1) == Some(&b'>') => {
                out.push(Token::Other);
                i += 2;
            }
            b'<' => {
                let mut hex = Vec::new();
                i += 1;
                while i < data.len() && data[i] != b'>' {
                    if data[i].is_ascii_hexdigit() {
                        hex.push(data[i]);
                    }
                    i += 1;
                }
                i += 1;
                if hex.len() % 2 == 1 {
                    hex.push(b'0');
                }
                let bytes = hex
                    .chunks(2)
                    .map(|p| {
                        let h = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                        h(p[0]) << 4 | h(p[1])
                    })
                    .collect();
                out.push(Token::Hex(bytes));
            }
            b'[' => {
                out.push(Token::ArrayStart);
                i += 1;
            }
            b']' => {
                out.push(Token::ArrayEnd);
                i += 1;
            }
            b'(' => {
                // literal strings do not occur in the sections we read; skip balanced
                let mut depth = 0;
                while i < data.len() {
                    match data[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                out.push(Token::Other);
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                let start = i;
                while i < data.len() && !data[i].is_ascii_whitespace() && !b"<>[]()/%{}".contains(&data[i]) {
                    i += 1;
                }
                if i == start {
                    i += 1;
                    out.push(Token::Other);
                } else {
                    out.push(Token::Keyword(data[start..i].to_vec()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_cmap;

    #[test]
    fn cmap_chars_ranges_and_arrays() {
        let cmap = b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap
            1 begincodespacerange <0000> <FFFF> endcodespacerange
            3 beginbfchar <0003> <0020> <0011> <00660069> <0024> <D835DC00> endbfchar
            2 beginbfrange <0041> <0043> <0061> <0050> <0052> [<0627> <0628> <062A>] endbfrange
            endcmap";
        let m = parse_cmap(cmap);
        assert_eq!(m[&0x03], " ");
        assert_eq!(m[&0x11], "fi");
        assert_eq!(m[&0x24], "\u{1D400}");
        assert_eq!(m[&0x41], "a");
        assert_eq!(m[&0x43], "c");
        assert_eq!(m[&0x51], "ب");
        assert_eq!(m[&0x52], "ت");
        assert!(!m.contains_key(&0x44));
    }

    #[test]
    fn hostile_cmap_does_not_blow_up() {
        let m = parse_cmap(b"beginbfrange <00000000> <FFFFFFFF> <0041> endbfrange <<<<[[[ ((( beginbfchar <01>");
        assert!(m.len() <= 0x10000);
    }

    #[test]
    fn ranges_repeated_thousands_of_times_cost_a_bounded_amount() {
        // four thousand full two-byte ranges: 262 million entries unbounded (half a minute), a
        // million here
        let mut cmap = Vec::new();
        for _ in 0..40 {
            cmap.extend_from_slice(b"100 beginbfrange\n");
            for _ in 0..100 {
                cmap.extend_from_slice(b"<0000> <FFFF> <0041>\n");
            }
            cmap.extend_from_slice(b"endbfrange\n");
        }
        cmap.extend_from_slice(b"1 beginbfchar <0001> <05D0> endbfchar");
        let started = std::time::Instant::now();
        let m = parse_cmap(&cmap);
        // every code once (less those that land on lone surrogates)
        assert_eq!(m.len(), 0x10000 - 0x800);
        assert_eq!(m[&0x41], "\u{82}");
        // what comes after the budget is spent is not read: code 1 keeps the ranges' value
        assert_eq!(m[&0x01], "B");
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    }
}
