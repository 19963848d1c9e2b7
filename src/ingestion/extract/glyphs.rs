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
}
