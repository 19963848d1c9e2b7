//! The BERT uncased WordPiece tokenizer of all-MiniLM-L6-v2, as Hugging Face's `tokenizers`
//! defines it (BertNormalizer, BertPreTokenizer, WordPiece), read from the model's
//! `tokenizer.json` (or `vocab.txt`). Padding and truncation are the caller's: no fixed 128.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    pub cls: u32,
    pub sep: u32,
    pub pad: u32,
    max_chars_per_word: usize,
}

impl WordPiece {
    /// From `tokenizer.json` (its `model.vocab`).
    pub fn from_tokenizer_json(json: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(json)?;
        let vocab = v["model"]["vocab"]
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("tokenizer.json has no model.vocab"))?
            .iter()
            .filter_map(|(k, id)| Some((k.clone(), u32::try_from(id.as_u64()?).ok()?)))
            .collect();
        Self::from_vocab(vocab)
    }

    /// From `vocab.txt`: one token a line, the line number is the id.
    pub fn from_vocab_txt(text: &str) -> anyhow::Result<Self> {
        Self::from_vocab(text.lines().enumerate().map(|(i, t)| (t.to_owned(), i as u32)).collect())
    }

    fn from_vocab(vocab: HashMap<String, u32>) -> anyhow::Result<Self> {
        let id = |t: &str| vocab.get(t).copied().ok_or_else(|| anyhow::anyhow!("vocabulary lacks {t}"));
        Ok(Self {
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            pad: id("[PAD]")?,
            vocab,
            max_chars_per_word: 100,
        })
    }

    /// Token ids of `text` with `[CLS]` and `[SEP]`, cut to at most `max_len` ids in all.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = vec![self.cls];
        let budget = max_len.saturating_sub(1);
        'words: for word in pre_tokenize(&normalize(text)) {
            for id in self.word_ids(&word) {
                if ids.len() >= budget {
                    break 'words;
                }
                ids.push(id);
            }
        }
        ids.push(self.sep);
        ids
    }

    /// Word pieces of `text`, special tokens included, without truncation.
    pub fn count(&self, text: &str) -> usize {
        2 + pre_tokenize(&normalize(text)).iter().map(|w| self.word_ids(w).len()).sum::<usize>()
    }

    fn word_ids(&self, word: &str) -> Vec<u32> {
        let chars: Vec<(usize, char)> = word.char_indices().collect();
        if chars.len() > self.max_chars_per_word {
            return vec![self.unk];
        }
        let mut out = Vec::new();
        let mut start = 0;
        let mut piece = String::new();
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let from = chars[start].0;
                let to = chars.get(end).map_or(word.len(), |c| c.0);
                piece.clear();
                if start > 0 {
                    piece.push_str("##");
                }
                piece.push_str(&word[from..to]);
                if let Some(id) = self.vocab.get(&piece) {
                    found = Some(*id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => return vec![self.unk],
            }
        }
        out
    }
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || c.general_category() == GeneralCategory::SpaceSeparator
}

fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    c.general_category_group() == GeneralCategoryGroup::Other
}

fn is_punctuation(c: char) -> bool {
    let u = c as u32;
    (33..=47).contains(&u)
        || (58..=64).contains(&u)
        || (91..=96).contains(&u)
        || (123..=126).contains(&u)
        || c.general_category_group() == GeneralCategoryGroup::Punctuation
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// BertNormalizer with clean_text, handle_chinese_chars, strip_accents and lowercase.
pub fn normalize(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            cleaned.push(' ');
        } else if is_cjk(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    cleaned
        .nfd()
        .filter(|c| c.general_category() != GeneralCategory::NonspacingMark)
        .flat_map(char::to_lowercase)
        .collect()
}

/// BertPreTokenizer: split on whitespace, and every punctuation character is a word of its own.
pub fn pre_tokenize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if is_whitespace(c) {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
        } else if is_punctuation(c) {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            words.push(c.to_string());
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n,\n!\nun\n##aff\n##able\nafe\ncafe\nسلام\n中\n文\n";
        WordPiece::from_vocab_txt(vocab).unwrap()
    }

    #[test]
    fn normalizes_like_bert() {
        assert_eq!(normalize("Héllo\tWORLD\u{200C}x"), "hello worldx");
        assert_eq!(normalize("中文"), " 中  文 ");
        assert_eq!(pre_tokenize("hello, world!"), vec!["hello", ",", "world", "!"]);
    }

    #[test]
    fn greedy_longest_match_first() {
        let t = tiny();
        // [CLS] hello , world ! [SEP]
        assert_eq!(t.encode("Hello, World!", 512), vec![2, 4, 6, 5, 7, 3]);
        // un ##aff ##able
        assert_eq!(t.encode("unaffable", 512), vec![2, 8, 9, 10, 3]);
        // unknown word, accents stripped, CJK split per character
        assert_eq!(t.encode("xyz café 中文 سلام", 512), vec![2, 1, 12, 14, 15, 13, 3]);
        assert_eq!(t.count("unaffable hello"), 6);
    }

    #[test]
    fn truncates_to_the_model_length() {
        let t = tiny();
        let ids = t.encode(&"hello ".repeat(1000), 256);
        assert_eq!(ids.len(), 256);
        assert_eq!(ids[0], t.cls);
        assert_eq!(*ids.last().unwrap(), t.sep);
    }
}
