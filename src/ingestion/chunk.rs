//! Cutting extracted pages into token-sized chunks.
//!
//! Chunks hold at most `max_tokens` tokens (o200k_base, the tokenizer of current OpenAI chat
//! models) and repeat about `overlap` tokens of their predecessor. A chunk ends at a paragraph
//! break where one lies in its second half, else at a sentence end, else between words; text
//! without spaces (Chinese, Japanese) is cut between characters, never inside one. An optional
//! second limit (the embedder's own tokenizer) caps chunks that the embedding model would
//! otherwise silently truncate.

use tiktoken_rs::{CoreBPE, o200k_base_singleton};

use super::pdf::PageText;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub ordinal: i32,
    pub page_from: i32,
    pub page_to: i32,
    pub text: String,
    pub token_count: i32,
}

/// A second token limit, counted with another tokenizer.
pub struct SecondaryLimit<'a> {
    pub count: &'a (dyn Fn(&str) -> usize + Send + Sync),
    pub max: usize,
}

pub struct Chunker<'a> {
    pub max_tokens: usize,
    pub overlap: usize,
    pub secondary: Option<SecondaryLimit<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    /// no separator (pieces of a long word)
    None,
    Space,
    Line,
    Sentence,
    Paragraph,
}

#[derive(Debug)]
struct Piece<'t> {
    text: &'t str,
    /// what separates this piece from the previous one
    before: Break,
    /// the separator written before this piece when it is not the first of a chunk
    sep: &'static str,
    page: u32,
    tokens: usize,
}

pub fn bpe() -> &'static CoreBPE {
    o200k_base_singleton()
}

pub fn count_tokens(text: &str) -> usize {
    bpe().encode_ordinary(text).len()
}

impl Chunker<'_> {
    pub fn new(max_tokens: usize, overlap: usize) -> Self {
        Self { max_tokens: max_tokens.max(8), overlap: overlap.min(max_tokens / 2), secondary: None }
    }

    pub fn chunk(&self, pages: &[PageText]) -> Vec<Chunk> {
        let bpe = bpe();
        let pieces = self.pieces(pages, bpe);
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < pieces.len() {
            // grow until the next piece would not fit
            let mut end = start;
            let mut tokens = 0;
            while end < pieces.len() {
                let t = pieces[end].tokens;
                if end > start && tokens + t > self.max_tokens {
                    break;
                }
                tokens += t;
                end += 1;
            }
            // prefer a strong break in the second half of the chunk
            if end < pieces.len() {
                let half = start + (end - start) / 2;
                for level in [Break::Paragraph, Break::Sentence, Break::Line] {
                    if let Some(cut) = (half.max(start + 1)..end).rev().find(|i| pieces[*i].before >= level) {
                        end = cut;
                        break;
                    }
                }
            }
            // exact counts: the sum of pieces is an estimate of the joined text's count, and the
            // second tokenizer's limit is not in it. The most pieces that fit, found by halving
            // (a count is monotone in the pieces joined): taking one piece off at a time counted
            // the whole text again per piece, about a hundred counts a chunk when MiniLM's 256
            // word pieces cut a chunk grown to 400 o200k tokens (the R FAQ's 150 chunks took
            // 2.3 s to cut, more than to embed)
            let mut text = join(&pieces[start..end]);
            if end > start + 1 && !self.fits(&text, bpe) {
                // `lo` is taken whatever it holds (a chunk has at least one piece); `hi` does not fit
                let (mut lo, mut hi) = (start + 1, end);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if self.fits(&join(&pieces[start..mid]), bpe) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                end = lo;
                text = join(&pieces[start..end]);
            }
            let token_count = bpe.encode_ordinary(&text).len();
            if !text.trim().is_empty() {
                chunks.push(Chunk {
                    ordinal: chunks.len() as i32,
                    page_from: pieces[start].page as i32,
                    page_to: pieces[end - 1].page as i32,
                    text,
                    token_count: token_count as i32,
                });
            }
            if end >= pieces.len() {
                break;
            }
            // the next chunk repeats the tail of this one, up to `overlap` tokens
            let mut next = end;
            let mut carried = 0;
            while next > start + 1 && carried + pieces[next - 1].tokens <= self.overlap {
                carried += pieces[next - 1].tokens;
                next -= 1;
            }
            start = next.max(start + 1);
        }
        chunks
    }

    fn fits(&self, text: &str, bpe: &CoreBPE) -> bool {
        bpe.encode_ordinary(text).len() <= self.max_tokens
            && self.secondary.as_ref().is_none_or(|s| (s.count)(text) <= s.max)
    }

    /// Words (or, inside long words, groups of characters) with the break before each.
    fn pieces<'t>(&self, pages: &'t [PageText], bpe: &CoreBPE) -> Vec<Piece<'t>> {
        let mut out: Vec<Piece<'t>> = Vec::new();
        // a single piece may take at most a quarter of a chunk
        let piece_max = (self.max_tokens / 4).max(1);
        let secondary_piece_max = self.secondary.as_ref().map(|s| (s.max / 4).max(1));
        // what the second tokenizer counts for nothing (special tokens, a prefix): an ASCII word
        // is at most one piece per byte more (ASCII is neither expanded by normalisation nor cut
        // finer than its bytes), so only one that could be too long is counted
        let secondary_base = self.secondary.as_ref().map_or(0, |s| (s.count)(""));
        for page in pages {
            let mut pending = Break::Paragraph;
            let text = page.text.as_str();
            let mut i = 0;
            let bytes = text.as_bytes();
            while i < bytes.len() {
                // whitespace run: decide the break it makes
                let ws_start = i;
                while i < bytes.len()
                    && (bytes[i] == b' ' || bytes[i] == b'\n' || bytes[i] == b'\t' || bytes[i] == b'\r')
                {
                    i += 1;
                }
                let ws = &text[ws_start..i];
                let newlines = ws.matches('\n').count();
                let brk = if newlines >= 2 {
                    Break::Paragraph
                } else if newlines == 1 {
                    Break::Line
                } else if !ws.is_empty() {
                    Break::Space
                } else {
                    Break::None
                };
                if i >= bytes.len() {
                    break;
                }
                let word_start = i;
                while i < bytes.len() && !matches!(bytes[i], b' ' | b'\n' | b'\t' | b'\r') {
                    i += 1;
                }
                let word = &text[word_start..i];
                let ws_break = pending.max(brk);
                pending = Break::None;
                let sep = match ws_break {
                    Break::Paragraph => "\n\n",
                    Break::Line => "\n",
                    Break::Space => " ",
                    _ => "",
                };
                let ends_sentence =
                    out.last().is_some_and(|p| p.text.ends_with(['.', '!', '?', '؟', '。', '！', '？']));
                let before =
                    if ws_break >= Break::Space && ends_sentence { ws_break.max(Break::Sentence) } else { ws_break };
                let tokens = bpe.encode_ordinary(word).len();
                let too_long = tokens > piece_max
                    || secondary_piece_max.zip(self.secondary.as_ref()).is_some_and(|(m, s)| {
                        // at most `secondary_base + word.len() + 1`, so at most `m`
                        let surely_fits = word.is_ascii() && secondary_base + word.len() < m;
                        !surely_fits && (s.count)(word) > m
                    });
                if too_long {
                    // cut between characters, a few at a time
                    let mut first = true;
                    let mut group_start = 0;
                    let mut group_tokens = 0;
                    let chars: Vec<(usize, char)> = word.char_indices().collect();
                    for (k, (pos, ch)) in chars.iter().enumerate() {
                        let ct = bpe.encode_ordinary(ch.encode_utf8(&mut [0; 4])).len().max(1);
                        if group_tokens + ct > piece_max.min(16) && *pos > group_start {
                            out.push(Piece {
                                text: &word[group_start..*pos],
                                before: if first { before } else { Break::None },
                                sep: if first { sep } else { "" },
                                page: page.number,
                                tokens: group_tokens,
                            });
                            first = false;
                            group_start = *pos;
                            group_tokens = 0;
                        }
                        group_tokens += ct;
                        if k == chars.len() - 1 {
                            out.push(Piece {
                                text: &word[group_start..],
                                before: if first { before } else { Break::None },
                                sep: if first { sep } else { "" },
                                page: page.number,
                                tokens: group_tokens,
                            });
                        }
                    }
                } else {
                    // a leading space usually merges into the word's first token
                    out.push(Piece { text: word, before, sep, page: page.number, tokens: tokens.max(1) });
                }
            }
        }
        out
    }
}

fn join(pieces: &[Piece<'_>]) -> String {
    let mut s = String::new();
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            s.push_str(p.sep);
        }
        s.push_str(p.text);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(number: u32, text: &str) -> PageText {
        PageText { number, text: text.to_owned() }
    }

    fn sentence(i: usize) -> String {
        format!("Sentence number {i} talks about retrieval and embeddings in some detail.")
    }

    #[test]
    fn chunks_respect_the_token_limit_and_overlap() {
        let text: Vec<String> = (0..200).map(sentence).collect();
        let pages = vec![page(1, &text[..100].join(" ")), page(2, &text[100..].join(" "))];
        let chunker = Chunker::new(100, 10);
        let chunks = chunker.chunk(&pages);
        assert!(chunks.len() > 10);
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.ordinal, i as i32);
            assert!(c.token_count <= 100, "{c:?}");
            assert_eq!(c.token_count as usize, count_tokens(&c.text));
            assert!(c.page_from <= c.page_to);
        }
        // every sentence appears somewhere, in order
        let all: String = chunks.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join(" ");
        for i in 0..200 {
            assert!(all.contains(&format!("number {i} talks")), "sentence {i} lost");
        }
        // consecutive chunks share text (the overlap) and cut at sentence ends
        for pair in chunks.windows(2) {
            let tail: String = pair[0].text.split(' ').next_back().unwrap().to_owned();
            assert!(pair[1].text.contains(&tail), "no overlap between {:?} and {:?}", pair[0].text, pair[1].text);
            assert!(pair[0].text.ends_with('.'), "{:?}", pair[0].text);
        }
        assert!(chunks.iter().any(|c| c.page_from == 1 && c.page_to == 2));
        assert_eq!(chunks.last().unwrap().page_to, 2);
    }

    #[test]
    fn paragraph_breaks_are_preferred_and_kept() {
        let para = |n: usize| (0..6).map(|i| sentence(n * 10 + i)).collect::<Vec<_>>().join("\n");
        let text = (0..6).map(para).collect::<Vec<_>>().join("\n\n");
        let chunks = Chunker::new(120, 0).chunk(&[page(3, &text)]);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.text.ends_with("detail."));
        }
        assert!(chunks.iter().any(|c| c.text.contains("\n\n") || c.text.contains('\n')));
        assert!(chunks.iter().all(|c| c.page_from == 3 && c.page_to == 3));
    }

    #[test]
    fn text_without_spaces_is_cut_between_characters() {
        let zh = "检索增强生成是一种结合信息检索与文本生成的方法。".repeat(60);
        let chunks = Chunker::new(50, 5).chunk(&[page(1, &zh)]);
        assert!(chunks.len() > 5);
        let mut joined = String::new();
        for c in &chunks {
            assert!(c.token_count <= 50);
            assert!(!c.text.contains('\u{FFFD}'));
            joined.push_str(&c.text);
        }
        // nothing lost (overlap only repeats)
        let distinct: std::collections::HashSet<char> = joined.chars().collect();
        for ch in zh.chars() {
            assert!(distinct.contains(&ch));
        }
    }

    #[test]
    fn secondary_limit_caps_chunks() {
        let text: Vec<String> = (0..50).map(sentence).collect();
        let count_words = |s: &str| s.split_whitespace().count();
        let chunker =
            Chunker { secondary: Some(SecondaryLimit { count: &count_words, max: 30 }), ..Chunker::new(400, 0) };
        let chunks = chunker.chunk(&[page(1, &text.join(" "))]);
        assert!(chunks.iter().all(|c| count_words(&c.text) <= 30));
        assert!(chunks.len() >= 50 * 11 / 30);
        // each chunk but the last holds the most words that fit, found in a few counts of the
        // text: the 400-token chunk grown first holds about 300 words, and taking them off one at
        // a time counted the text again for each
        let (calls, words) = (std::sync::atomic::AtomicUsize::new(0), 50 * 11);
        let counted = |s: &str| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            count_words(s)
        };
        let chunker = Chunker { secondary: Some(SecondaryLimit { count: &counted, max: 30 }), ..Chunker::new(400, 0) };
        let chunks = chunker.chunk(&[page(1, &text.join(" "))]);
        assert!(chunks[..chunks.len() - 1].iter().all(|c| count_words(&c.text) == 30), "{chunks:?}");
        let calls = calls.into_inner();
        // one count per word (pieces too long for a chunk are cut), then a few per chunk
        assert!(calls <= words + chunks.len() * 12, "{calls} counts for {} chunks", chunks.len());
    }

    #[test]
    fn words_too_long_for_the_second_tokenizer_are_cut() {
        // a tokenizer at its worst: a piece per byte, and two special tokens
        let count_bytes = |s: &str| s.len() + 2;
        let chunker =
            Chunker { secondary: Some(SecondaryLimit { count: &count_bytes, max: 40 }), ..Chunker::new(400, 0) };
        // short words (never counted alone: an ASCII word fits whatever the tokenizer), and words
        // of 60 ASCII letters and of 30 Persian letters, each more than a chunk's worth of bytes
        let long = "abcdefghijklmnopqrstuvwxyz".repeat(3)[..60].to_owned();
        let persian = "ب".repeat(30);
        let text = format!("a few short words {long} then more {persian} and the end");
        let chunks = chunker.chunk(&[page(1, &text)]);
        assert!(chunks.iter().all(|c| count_bytes(&c.text) <= 40), "{chunks:?}");
        let joined: String = chunks.iter().map(|c| c.text.as_str()).collect();
        assert!(joined.contains(&long[..20]) && joined.contains("end"), "{chunks:?}");
    }

    #[test]
    fn persian_text_chunks_cleanly() {
        let fa = "بازیابی اطلاعات از اسناد با کمک مدل‌های زبانی انجام می‌شود. ".repeat(80);
        let chunks = Chunker::new(60, 6).chunk(&[page(1, &fa)]);
        assert!(chunks.len() > 3);
        assert!(chunks.iter().all(|c| c.token_count <= 60 && !c.text.contains('\u{FFFD}')));
    }

    #[test]
    fn empty_input_gives_no_chunks() {
        assert!(Chunker::new(100, 10).chunk(&[page(1, ""), page(2, "  \n\n ")]).is_empty());
    }
}
