//! Glyph names to Unicode, for fonts that carry no ToUnicode map and name their glyphs in a
//! built-in encoding (TeX's Type1 fonts above all): the Latin, punctuation, ligature, Greek and
//! mathematical names those fonts use, and the `uniXXXX` / `uXXXX` conventions.

pub fn to_unicode(name: &str) -> Option<String> {
    let base = name.split('.').next().unwrap_or(name);
    if base.chars().count() == 1 && base.chars().all(|c| c.is_ascii_alphabetic()) {
        return Some(base.to_owned());
    }
    if let Some(hex) = base.strip_prefix("uni")
        && hex.len() >= 4
        && hex.len() % 4 == 0
        && hex.chars().all(|c| c.is_ascii_hexdigit())
    {
        let units: Vec<u16> =
            (0..hex.len() / 4).filter_map(|i| u16::from_str_radix(&hex[i * 4..i * 4 + 4], 16).ok()).collect();
        return String::from_utf16(&units).ok();
    }
    if let Some(hex) = base.strip_prefix('u')
        && (4..=6).contains(&hex.len())
        && hex.chars().all(|c| c.is_ascii_hexdigit())
    {
        return u32::from_str_radix(hex, 16).ok().and_then(char::from_u32).map(String::from);
    }
    let s = match base {
        "space" => " ",
        "exclam" => "!",
        "quotedbl" => "\"",
        "numbersign" => "#",
        "dollar" => "$",
        "percent" => "%",
        "ampersand" => "&",
        "quoteright" | "quotesingle" => "’",
        "parenleft" => "(",
        "parenright" => ")",
        "asterisk" | "asteriskmath" => "*",
        "plus" => "+",
        "comma" => ",",
        "hyphen" | "sfthyphen" => "-",
        "period" => ".",
        "slash" => "/",
        "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "colon" => ":",
        "semicolon" => ";",
        "less" => "<",
        "equal" => "=",
        "greater" => ">",
        "question" => "?",
        "at" => "@",
        "bracketleft" => "[",
        "backslash" => "\\",
        "bracketright" => "]",
        "asciicircum" | "circumflex" => "^",
        "underscore" => "_",
        "quoteleft" => "‘",
        "grave" => "`",
        "braceleft" => "{",
        "bar" => "|",
        "braceright" => "}",
        "asciitilde" | "tilde" => "~",
        "quotedblleft" => "“",
        "quotedblright" => "”",
        "quotesinglbase" => "‚",
        "quotedblbase" => "„",
        "endash" => "–",
        "emdash" => "—",
        "bullet" => "•",
        "ellipsis" => "…",
        "dagger" => "†",
        "daggerdbl" => "‡",
        "section" => "§",
        "paragraph" => "¶",
        "periodcentered" | "dotmath" => "·",
        "ff" => "ff",
        "fi" => "fi",
        "fl" => "fl",
        "ffi" => "ffi",
        "ffl" => "ffl",
        "dotlessi" => "ı",
        "dotlessj" => "ȷ",
        "germandbls" => "ß",
        "ae" => "æ",
        "AE" => "Æ",
        "oe" => "œ",
        "OE" => "Œ",
        "oslash" => "ø",
        "Oslash" => "Ø",
        "lslash" => "ł",
        "Lslash" => "Ł",
        "acute" => "´",
        "dieresis" => "¨",
        "ring" => "˚",
        "cedilla" => "¸",
        "caron" => "ˇ",
        "breve" => "˘",
        "macron" => "¯",
        "dotaccent" => "˙",
        "hungarumlaut" => "˝",
        "ogonek" => "˛",
        "sterling" => "£",
        "yen" => "¥",
        "Euro" => "€",
        "cent" => "¢",
        "exclamdown" => "¡",
        "questiondown" => "¿",
        "guillemotleft" => "«",
        "guillemotright" => "»",
        "guilsinglleft" => "‹",
        "guilsinglright" => "›",
        "copyright" => "©",
        "registered" => "®",
        "trademark" => "™",
        "degree" => "°",
        "plusminus" => "±",
        "multiply" => "×",
        "divide" => "÷",
        "minus" => "−",
        "perthousand" => "‰",
        "Gamma" => "Γ",
        "Delta" => "Δ",
        "Theta" => "Θ",
        "Lambda" => "Λ",
        "Xi" => "Ξ",
        "Pi" => "Π",
        "Sigma" => "Σ",
        "Upsilon" | "Upsilon1" => "Υ",
        "Phi" => "Φ",
        "Psi" => "Ψ",
        "Omega" => "Ω",
        "alpha" => "α",
        "beta" => "β",
        "gamma" => "γ",
        "delta" => "δ",
        "epsilon" | "epsilon1" => "ε",
        "zeta" => "ζ",
        "eta" => "η",
        "theta" | "theta1" => "θ",
        "iota" => "ι",
        "kappa" => "κ",
        "lambda" => "λ",
        "mu" => "μ",
        "nu" => "ν",
        "xi" => "ξ",
        "pi" | "omega1" => "π",
        "rho" | "rho1" => "ρ",
        "sigma" | "sigma1" => "σ",
        "tau" => "τ",
        "upsilon" => "υ",
        "phi" | "phi1" => "φ",
        "chi" => "χ",
        "psi" => "ψ",
        "omega" => "ω",
        "partialdiff" => "∂",
        "infinity" => "∞",
        "element" => "∈",
        "arrowright" => "→",
        "arrowleft" => "←",
        "arrowup" => "↑",
        "arrowdown" => "↓",
        "arrowboth" => "↔",
        "arrowdblright" => "⇒",
        "arrowdblleft" => "⇐",
        "arrowdblboth" => "⇔",
        "lessequal" => "≤",
        "greaterequal" => "≥",
        "notequal" => "≠",
        "approxequal" => "≈",
        "equivalence" => "≡",
        "similar" => "∼",
        "propersubset" => "⊂",
        "propersuperset" => "⊃",
        "reflexsubset" => "⊆",
        "reflexsuperset" => "⊇",
        "union" => "∪",
        "intersection" => "∩",
        "logicaland" => "∧",
        "logicalor" => "∨",
        "logicalnot" => "¬",
        "universal" => "∀",
        "existential" => "∃",
        "emptyset" => "∅",
        "nabla" | "gradient" => "∇",
        "radical" => "√",
        "integral" => "∫",
        "summation" => "∑",
        "product" => "∏",
        "proportional" => "∝",
        "prime" | "minute" => "′",
        "second" => "″",
        "angbracketleft" => "⟨",
        "angbracketright" => "⟩",
        "circleplus" => "⊕",
        "circlemultiply" => "⊗",
        "openbullet" => "◦",
        "star" => "⋆",
        "lessmuch" => "≪",
        "greatermuch" => "≫",
        "backslashmath" => "\\",
        _ => return None,
    };
    Some(s.to_owned())
}

/// The built-in encoding of a Type1 font program: its `dup <code> /<name> put` entries, from the
/// cleartext part; `None` when the font uses StandardEncoding or has no encoding.
pub fn type1_encoding(cleartext: &[u8]) -> Option<Vec<(u8, String)>> {
    let text = String::from_utf8_lossy(cleartext);
    let start = text.find("/Encoding")?;
    let rest = &text[start + "/Encoding".len()..];
    if rest.trim_start().starts_with("StandardEncoding") {
        return None;
    }
    let end = rest.find("readonly def").or_else(|| rest.find(" def")).unwrap_or(rest.len());
    let mut out = Vec::new();
    let tokens: Vec<&str> = rest[..end].split_whitespace().collect();
    let mut i = 0;
    while i + 3 < tokens.len() {
        if tokens[i] == "dup"
            && let Ok(code) = tokens[i + 1].parse::<u8>()
            && let Some(name) = tokens[i + 2].strip_prefix('/')
            && tokens[i + 3] == "put"
        {
            out.push((code, name.to_owned()));
            i += 4;
        } else {
            i += 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// CFF's standard strings 0–228 (the ISOAdobe character set), by string id; the rest of the
/// 391 (Expert names and font-weight words) never name text glyphs that matter here.
const CFF_STANDARD: [&str; 229] = [
    ".notdef",
    "space",
    "exclam",
    "quotedbl",
    "numbersign",
    "dollar",
    "percent",
    "ampersand",
    "quoteright",
    "parenleft",
    "parenright",
    "asterisk",
    "plus",
    "comma",
    "hyphen",
    "period",
    "slash",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "colon",
    "semicolon",
    "less",
    "equal",
    "greater",
    "question",
    "at",
    "A",
    "B",
    "C",
    "D",
    "E",
    "F",
    "G",
    "H",
    "I",
    "J",
    "K",
    "L",
    "M",
    "N",
    "O",
    "P",
    "Q",
    "R",
    "S",
    "T",
    "U",
    "V",
    "W",
    "X",
    "Y",
    "Z",
    "bracketleft",
    "backslash",
    "bracketright",
    "asciicircum",
    "underscore",
    "quoteleft",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "p",
    "q",
    "r",
    "s",
    "t",
    "u",
    "v",
    "w",
    "x",
    "y",
    "z",
    "braceleft",
    "bar",
    "braceright",
    "asciitilde",
    "exclamdown",
    "cent",
    "sterling",
    "fraction",
    "yen",
    "florin",
    "section",
    "currency",
    "quotesingle",
    "quotedblleft",
    "guillemotleft",
    "guilsinglleft",
    "guilsinglright",
    "fi",
    "fl",
    "endash",
    "dagger",
    "daggerdbl",
    "periodcentered",
    "paragraph",
    "bullet",
    "quotesinglbase",
    "quotedblbase",
    "quotedblright",
    "guillemotright",
    "ellipsis",
    "perthousand",
    "questiondown",
    "grave",
    "acute",
    "circumflex",
    "tilde",
    "macron",
    "breve",
    "dotaccent",
    "dieresis",
    "ring",
    "cedilla",
    "hungarumlaut",
    "ogonek",
    "caron",
    "emdash",
    "AE",
    "ordfeminine",
    "Lslash",
    "Oslash",
    "OE",
    "ordmasculine",
    "ae",
    "dotlessi",
    "lslash",
    "oslash",
    "oe",
    "germandbls",
    "onesuperior",
    "logicalnot",
    "mu",
    "trademark",
    "Eth",
    "onehalf",
    "plusminus",
    "Thorn",
    "onequarter",
    "divide",
    "brokenbar",
    "degree",
    "thorn",
    "threequarters",
    "twosuperior",
    "registered",
    "minus",
    "eth",
    "multiply",
    "threesuperior",
    "copyright",
    "Aacute",
    "Acircumflex",
    "Adieresis",
    "Agrave",
    "Aring",
    "Atilde",
    "Ccedilla",
    "Eacute",
    "Ecircumflex",
    "Edieresis",
    "Egrave",
    "Iacute",
    "Icircumflex",
    "Idieresis",
    "Igrave",
    "Ntilde",
    "Oacute",
    "Ocircumflex",
    "Odieresis",
    "Ograve",
    "Otilde",
    "Scaron",
    "Uacute",
    "Ucircumflex",
    "Udieresis",
    "Ugrave",
    "Yacute",
    "Ydieresis",
    "Zcaron",
    "aacute",
    "acircumflex",
    "adieresis",
    "agrave",
    "aring",
    "atilde",
    "ccedilla",
    "eacute",
    "ecircumflex",
    "edieresis",
    "egrave",
    "iacute",
    "icircumflex",
    "idieresis",
    "igrave",
    "ntilde",
    "oacute",
    "ocircumflex",
    "odieresis",
    "ograve",
    "otilde",
    "scaron",
    "uacute",
    "ucircumflex",
    "udieresis",
    "ugrave",
    "yacute",
    "ydieresis",
    "zcaron",
];

/// The built-in encoding of a CFF font program (`FontFile3`, Type1C): code → glyph name for the
/// glyphs it names with its own strings (TeX's math fonts: `alpha`, `epsilon1`, …) or with
/// CFF's standard strings of the ISOAdobe set (the same fonts put `comma` where ASCII has `;`).
/// `None` for a font with a predefined encoding or a program that does not parse; every read is
/// bounds-checked.
pub fn cff_encoding(data: &[u8]) -> Option<Vec<(u8, String)>> {
    const STANDARD_STRINGS: usize = 391;
    let header = usize::from(*data.get(2)?);
    let (_, after_names) = cff_index(data, header)?;
    let (top, after_top) = cff_index(data, after_names)?;
    let (strings, _) = cff_index(data, after_top)?;
    let dict = cff_dict(top.first()?)?;
    let operand = |op: u16| dict.iter().find(|(o, _)| *o == op).and_then(|(_, v)| v.last().copied());
    let (charset, encoding, charstrings) = (operand(15).unwrap_or(0), operand(16).unwrap_or(0), operand(17)?);
    // 0 and 1 are the predefined Standard and Expert encodings; charsets 0–2 are predefined too
    if encoding <= 1 || charset <= 2 {
        return None;
    }
    let u16_at = |i: usize| Some(u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]));
    // the CharStrings INDEX starts with its count: the number of glyphs
    let glyphs = usize::from(u16_at(usize::try_from(charstrings).ok()?)?);
    // charset: the string id of each glyph after .notdef
    let mut sids = vec![0u16];
    let mut at = usize::try_from(charset).ok()?;
    let format = *data.get(at)?;
    at += 1;
    while sids.len() < glyphs {
        match format {
            0 => {
                sids.push(u16_at(at)?);
                at += 2;
            }
            1 | 2 => {
                let first = u16_at(at)?;
                let left = if format == 1 { u16::from(*data.get(at + 2)?) } else { u16_at(at + 2)? };
                at += if format == 1 { 3 } else { 4 };
                for k in 0..=left {
                    if sids.len() >= glyphs {
                        break;
                    }
                    sids.push(first.checked_add(k)?);
                }
            }
            _ => return None,
        }
    }
    // encoding: the code of each glyph in order (format 0), or ranges of codes (format 1), then
    // optional supplements (code, string id)
    let mut at = usize::try_from(encoding).ok()?;
    let format = *data.get(at)?;
    let mut codes: Vec<(u8, u16)> = Vec::new();
    let mut gid = 1usize;
    match format & 0x7f {
        0 => {
            let n = usize::from(*data.get(at + 1)?);
            for i in 0..n {
                codes.push((*data.get(at + 2 + i)?, *sids.get(gid)?));
                gid += 1;
            }
            at += 2 + n;
        }
        1 => {
            let ranges = usize::from(*data.get(at + 1)?);
            for r in 0..ranges {
                let first = *data.get(at + 2 + 2 * r)?;
                let left = *data.get(at + 3 + 2 * r)?;
                for k in 0..=left {
                    let Some(&sid) = sids.get(gid) else { break };
                    codes.push((first.checked_add(k)?, sid));
                    gid += 1;
                }
            }
            at += 2 + 2 * ranges;
        }
        _ => return None,
    }
    if format & 0x80 != 0 {
        let n = usize::from(*data.get(at)?);
        for i in 0..n {
            codes.push((*data.get(at + 1 + 3 * i)?, u16_at(at + 2 + 3 * i)?));
        }
    }
    let out: Vec<(u8, String)> = codes
        .into_iter()
        .filter_map(|(code, sid)| {
            let sid = usize::from(sid);
            let name = match sid.checked_sub(STANDARD_STRINGS) {
                Some(own) => String::from_utf8_lossy(strings.get(own)?).into_owned(),
                None => (*CFF_STANDARD.get(sid)?).to_owned(),
            };
            (sid != 0).then_some((code, name))
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// A CFF INDEX at `at`: its items, and where the next structure starts.
fn cff_index(data: &[u8], at: usize) -> Option<(Vec<&[u8]>, usize)> {
    let count = usize::from(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]));
    if count == 0 {
        return Some((Vec::new(), at + 2));
    }
    let size = usize::from(*data.get(at + 2)?);
    if !(1..=4).contains(&size) {
        return None;
    }
    let offset = |i: usize| -> Option<usize> {
        let start = at + 3 + i * size;
        Some(data.get(start..start + size)?.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)))
    };
    // offsets count from the byte before the data
    let base = at + 2 + (count + 1) * size;
    let mut items = Vec::with_capacity(count);
    for i in 0..count {
        let (from, to) = (offset(i)?, offset(i + 1)?);
        items.push(data.get(base + from..base + to)?);
    }
    Some((items, base + offset(count)?))
}

/// A CFF DICT: (operator, integer operands) pairs; real operands are skipped (read as 0).
fn cff_dict(data: &[u8]) -> Option<Vec<(u16, Vec<i64>)>> {
    let mut out = Vec::new();
    let mut operands = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let b0 = data[i];
        match b0 {
            0..=11 | 13..=21 => {
                out.push((u16::from(b0), std::mem::take(&mut operands)));
                i += 1;
            }
            12 => {
                out.push((1200 + u16::from(*data.get(i + 1)?), std::mem::take(&mut operands)));
                i += 2;
            }
            28 => {
                operands.push(i64::from(i16::from_be_bytes([*data.get(i + 1)?, *data.get(i + 2)?])));
                i += 3;
            }
            29 => {
                let b = data.get(i + 1..i + 5)?;
                operands.push(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])));
                i += 5;
            }
            30 => {
                // a real: nibbles up to an 0xf nibble
                i += 1;
                while i < data.len() && data[i] & 0x0f != 0x0f && data[i] >> 4 != 0x0f {
                    i += 1;
                }
                i += 1;
                operands.push(0);
            }
            32..=246 => {
                operands.push(i64::from(b0) - 139);
                i += 1;
            }
            247..=250 => {
                operands.push((i64::from(b0) - 247) * 256 + i64::from(*data.get(i + 1)?) + 108);
                i += 2;
            }
            251..=254 => {
                operands.push(-(i64::from(b0) - 251) * 256 - i64::from(*data.get(i + 1)?) - 108);
                i += 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_conventions() {
        assert_eq!(to_unicode("period").as_deref(), Some("."));
        assert_eq!(to_unicode("A").as_deref(), Some("A"));
        assert_eq!(to_unicode("fi").as_deref(), Some("fi"));
        assert_eq!(to_unicode("uni0627").as_deref(), Some("ا"));
        assert_eq!(to_unicode("u1D400").as_deref(), Some("\u{1D400}"));
        assert_eq!(to_unicode("alpha.sc").as_deref(), Some("α"));
        assert_eq!(to_unicode("g123"), None);
    }

    #[test]
    fn type1_builtin_encodings() {
        let font = b"%!PS-AdobeFont-1.0: CMMI9\n/FontName /CMMI9 def\n/Encoding 256 array\n0 1 255 {1 index exch /.notdef put} for\ndup 58 /period put\ndup 59 /comma put\ndup 11 /alpha put\nreadonly def\ncurrentdict end\ncurrentfile eexec";
        let enc = type1_encoding(font).unwrap();
        assert_eq!(enc, vec![(58, "period".into()), (59, "comma".into()), (11, "alpha".into())]);
        assert!(type1_encoding(b"/Encoding StandardEncoding def").is_none());
    }

    /// A CFF INDEX of the given items (offsets of one byte).
    fn index(items: &[&[u8]]) -> Vec<u8> {
        let mut out = (items.len() as u16).to_be_bytes().to_vec();
        if items.is_empty() {
            return out;
        }
        out.push(1);
        let mut offset = 1u8;
        out.push(offset);
        for item in items {
            offset += item.len() as u8;
            out.push(offset);
        }
        for item in items {
            out.extend_from_slice(item);
        }
        out
    }

    fn int(v: i32) -> Vec<u8> {
        let mut out = vec![29];
        out.extend_from_slice(&v.to_be_bytes());
        out
    }

    /// A CFF program with three glyphs: two with names of their own (string ids 391, 392) and
    /// one standard name (id 13, `comma`), encoded as codes 34, 11 and 59.
    fn cff(encoding_format: u8) -> Vec<u8> {
        let header = [1u8, 0, 4, 1];
        let names = index(&[b"F"]);
        let strings = index(&[b"epsilon1", b"alpha"]);
        let globals = index(&[]);
        let charstrings = index(&[&[14], &[14], &[14], &[14]]);
        let charset = [0u8, 1, 135, 1, 136, 0, 13];
        let encoding: Vec<u8> = match encoding_format {
            0 => vec![0, 3, 34, 11, 59],
            _ => vec![1, 3, 34, 0, 11, 0, 59, 0],
        };
        // the top DICT's size does not depend on the offsets (5-byte integers)
        let top_len = 3 * 6;
        let top_index_len = index(&[&vec![0u8; top_len]]).len();
        let start = header.len() + names.len() + top_index_len + strings.len() + globals.len();
        let (cs_at, charset_at, encoding_at) =
            (start, start + charstrings.len(), start + charstrings.len() + charset.len());
        let mut top = int(charset_at as i32);
        top.push(15);
        top.extend(int(encoding_at as i32));
        top.push(16);
        top.extend(int(cs_at as i32));
        top.push(17);
        let mut out = header.to_vec();
        out.extend(names);
        out.extend(index(&[&top]));
        out.extend(strings);
        out.extend(globals);
        out.extend(charstrings);
        out.extend(charset);
        out.extend(encoding);
        out
    }

    #[test]
    fn cff_builtin_encodings() {
        for format in [0, 1] {
            let mut got = cff_encoding(&cff(format)).unwrap();
            got.sort();
            assert_eq!(
                got,
                vec![(11, "alpha".to_owned()), (34, "epsilon1".to_owned()), (59, "comma".to_owned())],
                "format {format}"
            );
        }
        // truncated or garbled programs give nothing, and never panic
        let whole = cff(0);
        for cut in 0..whole.len() {
            let _ = cff_encoding(&whole[..cut]);
        }
        let mut garbled = whole.clone();
        for i in (0..garbled.len()).step_by(3) {
            garbled[i] = garbled[i].wrapping_mul(37).wrapping_add(11);
            let _ = cff_encoding(&garbled);
        }
    }
}
