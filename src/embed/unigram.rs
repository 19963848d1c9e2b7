//! The SentencePiece Unigram tokenizer of XLM-RoBERTa models (multilingual-e5-small), as Hugging
//! Face's `tokenizers` runs the model's own `tokenizer.json`: special tokens cut out of the raw text,
//! then the `Precompiled` normalizer (SentencePiece's `nmt_nfkc` charsmap: a double-array trie of
//! rewrites), runs of spaces made one, `Metaspace` (a `▁` before the text, every space a `▁`, a
//! word before each `▁`), and the most likely segmentation of each word under the pieces' scores
//! (Viterbi), unknown characters fused into one `<unk>`. The ids match that library's id for id on
//! a multilingual sample (tests/fixtures/e5-tokenizer-ids.json, made by
//! tests/fixtures/make_e5_tokenizer_ids.py).
//!
//! Cost is linear in the text: each character starts at most `max_piece_chars` look-ups.

use std::collections::HashMap;

use anyhow::Context;
use base64::Engine as _;
use unicode_segmentation::UnicodeSegmentation;

const SPACE_MARK: char = '\u{2581}';
/// SentencePiece's penalty for an unknown character below the least likely piece.
const UNKNOWN_PENALTY: f64 = 10.0;

pub struct Unigram {
    pieces: HashMap<Box<str>, u32>,
    scores: Vec<f64>,
    /// the longest piece, in characters (no match is looked for beyond it)
    max_piece_chars: usize,
    unknown: u32,
    unknown_score: f64,
    pub bos: u32,
    pub eos: u32,
    /// special tokens matched in the raw text, longest first
    specials: Vec<(String, u32)>,
    charsmap: Charsmap,
}

impl Unigram {
    /// From the model's `tokenizer.json`; anything but the XLM-R pipeline described above is refused
    /// (another normalizer or pre-tokenizer would give other ids silently).
    pub fn from_tokenizer_json(json: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(json).context("tokenizer.json is not JSON")?;
        let model = &v["model"];
        anyhow::ensure!(model["type"] == "Unigram", "tokenizer.json: the model is not Unigram");
        let normalizers = v["normalizer"]["normalizers"].as_array().map(Vec::as_slice).unwrap_or_default();
        let [precompiled, spaces] = normalizers else {
            anyhow::bail!("tokenizer.json: expected the normalizers Precompiled and Replace");
        };
        anyhow::ensure!(
            precompiled["type"] == "Precompiled"
                && spaces["type"] == "Replace"
                && spaces["pattern"]["Regex"] == " {2,}"
                && spaces["content"] == " ",
            "tokenizer.json: expected the normalizers Precompiled and Replace(' {{2,}}', ' ')"
        );
        let pre = &v["pre_tokenizer"];
        anyhow::ensure!(
            pre["type"] == "Metaspace"
                && pre["replacement"] == "\u{2581}"
                && (pre["add_prefix_space"] == true || pre["prepend_scheme"] == "always"),
            "tokenizer.json: expected the Metaspace pre-tokenizer"
        );
        let charsmap = base64::engine::general_purpose::STANDARD
            .decode(precompiled["precompiled_charsmap"].as_str().context("no precompiled_charsmap")?)
            .context("precompiled_charsmap is not base64")?;
        let charsmap = Charsmap::parse(charsmap)?;

        let vocab = model["vocab"].as_array().context("tokenizer.json has no model.vocab")?;
        let mut pieces = HashMap::with_capacity(vocab.len());
        let mut scores = Vec::with_capacity(vocab.len());
        let mut max_piece_chars = 1;
        for (id, entry) in vocab.iter().enumerate() {
            let (Some(piece), Some(score)) = (entry[0].as_str(), entry[1].as_f64()) else {
                anyhow::bail!("tokenizer.json: vocabulary entry {id} is not [piece, score]");
            };
            max_piece_chars = max_piece_chars.max(piece.chars().count());
            pieces.insert(piece.into(), u32::try_from(id)?);
            scores.push(score);
        }
        let unknown = u32::try_from(model["unk_id"].as_u64().context("tokenizer.json: no unk_id")?)?;
        anyhow::ensure!((unknown as usize) < scores.len(), "tokenizer.json: unk_id outside the vocabulary");
        let min_score = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let id = |t: &str| pieces.get(t).copied().with_context(|| format!("the vocabulary lacks {t}"));
        let mut specials: Vec<(String, u32)> = v["added_tokens"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|t| t["special"] == true && t["normalized"] == false)
            .filter_map(|t| Some((t["content"].as_str()?.to_owned(), u32::try_from(t["id"].as_u64()?).ok()?)))
            .filter(|(content, _)| !content.is_empty())
            .collect();
        specials.sort_by_key(|(content, _)| std::cmp::Reverse(content.len()));
        Ok(Self {
            bos: id("<s>")?,
            eos: id("</s>")?,
            pieces,
            scores,
            max_piece_chars,
            unknown,
            unknown_score: min_score - UNKNOWN_PENALTY,
            specials,
            charsmap,
        })
    }

    /// Pieces in the vocabulary.
    pub fn pieces(&self) -> usize {
        self.scores.len()
    }

    /// Token ids of `text` between `<s>` and `</s>`, cut to at most `max_len` ids in all.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = vec![self.bos];
        self.content(text, &mut ids, max_len.max(2) - 1);
        ids.push(self.eos);
        ids
    }

    /// Tokens of `text` with `<s>` and `</s>`, without truncation.
    pub fn count(&self, text: &str) -> usize {
        let mut ids = Vec::new();
        self.content(text, &mut ids, usize::MAX);
        ids.len() + 2
    }

    /// Appends the content ids of `text` to `ids` while `ids` is shorter than `limit`.
    fn content(&self, text: &str, ids: &mut Vec<u32>, limit: usize) {
        let mut rest = text;
        while !rest.is_empty() && ids.len() < limit {
            match self.next_special(rest) {
                Some((at, content, id)) => {
                    self.segment(&rest[..at], ids, limit);
                    if ids.len() < limit {
                        ids.push(id);
                    }
                    rest = &rest[at + content.len()..];
                }
                None => {
                    self.segment(rest, ids, limit);
                    rest = "";
                }
            }
        }
    }

    /// The first special token in `text` (the longest where several start at one place).
    fn next_special(&self, text: &str) -> Option<(usize, &str, u32)> {
        if self.specials.is_empty() {
            return None;
        }
        text.char_indices().find_map(|(at, _)| {
            let here = &text[at..];
            self.specials
                .iter()
                .find(|(content, _)| here.starts_with(content.as_str()))
                .map(|(c, id)| (at, c.as_str(), *id))
        })
    }

    /// Normalises one stretch of text between special tokens and appends its pieces.
    fn segment(&self, text: &str, ids: &mut Vec<u32>, limit: usize) {
        let normalized = collapse_spaces(&self.charsmap.normalize(text));
        if normalized.is_empty() {
            return;
        }
        let mut marked = String::with_capacity(normalized.len() + 3);
        if !normalized.starts_with(' ') {
            marked.push(SPACE_MARK);
        }
        marked.extend(normalized.chars().map(|c| if c == ' ' { SPACE_MARK } else { c }));
        // a word begins at each space mark
        let mut start = 0;
        for (at, c) in marked.char_indices().skip(1) {
            if c == SPACE_MARK {
                self.word(&marked[start..at], ids, limit);
                start = at;
            }
        }
        self.word(&marked[start..], ids, limit);
    }

    /// The most likely pieces of one word (Viterbi over the pieces' log-probabilities).
    fn word(&self, word: &str, ids: &mut Vec<u32>, limit: usize) {
        if ids.len() >= limit || word.is_empty() {
            return;
        }
        let bounds: Vec<usize> = word.char_indices().map(|(i, _)| i).chain([word.len()]).collect();
        let n = bounds.len() - 1;
        // best[e] = (score, start char, piece id) of the best segmentation of chars 0..e; in f64 as
        // the reference sums them (ties between equal sets of pieces then break the same way)
        let mut best: Vec<(f64, usize, u32)> = vec![(f64::NEG_INFINITY, 0, 0); n + 1];
        best[0].0 = 0.0;
        for s in 0..n {
            let base = best[s].0;
            if base == f64::NEG_INFINITY {
                continue;
            }
            let mut single = false;
            for e in s + 1..=n.min(s + self.max_piece_chars) {
                if let Some(&id) = self.pieces.get(&word[bounds[s]..bounds[e]]) {
                    let score = base + self.scores[id as usize];
                    if best[e].0 == f64::NEG_INFINITY || score > best[e].0 {
                        best[e] = (score, s, id);
                    }
                    single |= e == s + 1;
                }
            }
            if !single {
                let score = base + self.unknown_score;
                if best[s + 1].0 == f64::NEG_INFINITY || score > best[s + 1].0 {
                    best[s + 1] = (score, s, self.unknown);
                }
            }
        }
        let mut pieces = Vec::new();
        let mut e = n;
        while e > 0 {
            let (_, s, id) = best[e];
            // neighbouring unknown characters are one unknown token
            if !(id == self.unknown && pieces.last() == Some(&self.unknown)) {
                pieces.push(id);
            }
            e = s;
        }
        for id in pieces.into_iter().rev() {
            if ids.len() >= limit {
                break;
            }
            ids.push(id);
        }
    }
}

/// Runs of two or more U+0020 become one.
fn collapse_spaces(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut previous_space = false;
    for c in text.chars() {
        if c == ' ' && previous_space {
            continue;
        }
        previous_space = c == ' ';
        out.push(c);
    }
    out
}

/// SentencePiece's precompiled normalisation map: `[trie size: u32][double-array trie][rewrites]`,
/// each trie value the offset of a NUL-terminated rewrite.
struct Charsmap {
    trie: Vec<u32>,
    rewrites: Vec<u8>,
}

impl Charsmap {
    fn parse(bytes: Vec<u8>) -> anyhow::Result<Self> {
        let size =
            bytes.get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize).context("empty charsmap")?;
        anyhow::ensure!(size % 4 == 0 && 4 + size <= bytes.len(), "the charsmap's trie does not fit");
        let trie = bytes[4..4 + size].chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
        Ok(Self { trie, rewrites: bytes[4 + size..].to_vec() })
    }

    /// The rewrite of the shortest key that is a prefix of `chunk` (as Hugging Face's port does;
    /// the rest of the chunk goes with it), if any.
    fn transform(&self, chunk: &[u8]) -> Option<&str> {
        let offset = |unit: u32| ((unit >> 10) << ((unit & (1 << 9)) >> 6)) as usize;
        let mut node = offset(*self.trie.first()?);
        for &c in chunk {
            if c == 0 {
                break;
            }
            node ^= c as usize;
            let unit = *self.trie.get(node)?;
            if unit & ((1 << 31) | 0xff) != c as u32 {
                return None;
            }
            node ^= offset(unit);
            if (unit >> 8) & 1 == 1 {
                let start = (*self.trie.get(node)? & ((1 << 31) - 1)) as usize;
                let rest = self.rewrites.get(start..)?;
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                return std::str::from_utf8(&rest[..end]).ok();
            }
        }
        None
    }

    /// Each grapheme shorter than 6 bytes is rewritten whole if a rule matches it, otherwise each of
    /// its characters is (the reference's rule, kept for identical ids).
    fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for grapheme in text.graphemes(true) {
            if grapheme.len() < 6
                && let Some(rewrite) = self.transform(grapheme.as_bytes())
            {
                out.push_str(rewrite);
                continue;
            }
            for (at, c) in grapheme.char_indices() {
                match self.transform(&grapheme.as_bytes()[at..at + c.len_utf8()]) {
                    Some(rewrite) => out.push_str(rewrite),
                    None => out.push(c),
                }
            }
        }
        out
    }
}
