//! The offline model (`offline-extractive`): no network, no generation. It answers with the
//! sentences of the retrieved passages that share the most words with the question, each cited
//! as [n], streamed in the same frames as a generative model's tokens. Deterministic.

use std::collections::HashSet;

use tokio::sync::mpsc;

use super::{ChatError, ChatModel, ChatRequest, Usage};
use futures_util::future::BoxFuture;

pub const NAME: &str = "offline-extractive";

pub struct OfflineModel;

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| w.chars().count() > 2).map(str::to_lowercase).collect()
}

/// Sentences: a stop, question or exclamation mark ends one when whitespace (or the end) follows,
/// so `install.packages()` or `3.14` stay whole.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let flush = |current: &mut String, out: &mut Vec<String>| {
        let s = current.split_whitespace().collect::<Vec<_>>().join(" ");
        if s.chars().count() > 20 {
            out.push(s);
        }
        current.clear();
    };
    while let Some(c) = chars.next() {
        current.push(if c == '\n' { ' ' } else { c });
        let ends = matches!(c, '.' | '!' | '?' | '؟' | '。') && chars.peek().is_none_or(|n| n.is_whitespace());
        if ends {
            flush(&mut current, &mut out);
        }
    }
    flush(&mut current, &mut out);
    out
}

/// The extractive answer for a question and its numbered sources.
pub fn compose(request: &ChatRequest) -> String {
    let question: HashSet<String> = words(&request.question).into_iter().collect();
    let mut picked: Vec<(usize, String)> = Vec::new();
    for (i, source) in request.sources.iter().enumerate().take(3) {
        // the one or two sentences of this passage that overlap the question most
        let mut scored: Vec<(usize, usize, String)> = sentences(&source.text)
            .into_iter()
            .enumerate()
            .map(|(pos, s)| {
                let overlap = words(&s).iter().filter(|w| question.contains(*w)).count();
                (overlap, pos, s)
            })
            .collect();
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut best: Vec<(usize, String)> = scored.into_iter().take(2).map(|(_, pos, s)| (pos, s)).collect();
        best.sort_by_key(|(pos, _)| *pos);
        let text: String = best.into_iter().map(|(_, s)| s).collect::<Vec<_>>().join(" ");
        let text = if text.is_empty() { crate::retrieval::snippet(&source.text, 300) } else { text };
        picked.push((i + 1, text));
    }
    let lead = if request.persian {
        "بر اساس اسناد شما (پاسخ استخراجی، بدون مدل زبانی):"
    } else {
        "From your documents (an extractive answer; no language model was used):"
    };
    let mut answer = String::from(lead);
    for (n, text) in picked {
        answer.push_str(&format!("\n\n{text} [{n}]"));
    }
    answer
}

impl ChatModel for OfflineModel {
    fn name(&self) -> &str {
        NAME
    }

    fn stream<'a>(
        &'a self,
        request: &'a ChatRequest,
        tokens: mpsc::Sender<String>,
    ) -> BoxFuture<'a, Result<Option<Usage>, ChatError>> {
        Box::pin(async move {
            let answer = compose(request);
            // word by word, keeping the whitespace with the word before it
            let mut piece = String::new();
            for c in answer.chars() {
                if c.is_whitespace() && !piece.trim().is_empty() {
                    piece.push(c);
                    if tokens.send(std::mem::take(&mut piece)).await.is_err() {
                        return Ok(None);
                    }
                    continue;
                }
                piece.push(c);
            }
            if !piece.is_empty() {
                let _ = tokens.send(piece).await;
            }
            Ok(None)
        })
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::retrieval::Source;

    fn source(text: &str) -> Source {
        Source {
            document_id: Uuid::nil(),
            filename: "a.pdf".into(),
            page: 1,
            page_to: 1,
            score: 1.0,
            similarity: 0.9,
            snippet: String::new(),
            text: text.into(),
            chunk_id: 1,
            token_count: 1,
        }
    }

    #[tokio::test]
    async fn answers_with_the_best_sentences_cited() {
        let request = ChatRequest {
            model: NAME.into(),
            system: String::new(),
            messages: vec![],
            question: "How do I install packages in R?".into(),
            sources: vec![
                source("R is a language. Packages are installed with install.packages() from CRAN. Plots are nice."),
                source("Another passage about graphics and plotting devices in general terms."),
            ],
            persian: false,
        };
        let answer = compose(&request);
        assert!(answer.starts_with("From your documents"));
        assert!(answer.contains("Packages are installed with install.packages() from CRAN. [1]"), "{answer}");
        assert!(answer.contains("[2]"));
        let (tx, mut rx) = mpsc::channel::<String>(4);
        let model = OfflineModel;
        let handle = tokio::spawn(async move {
            let mut streamed = String::new();
            while let Some(t) = rx.recv().await {
                streamed.push_str(&t);
            }
            streamed
        });
        model.stream(&request, tx).await.unwrap();
        assert_eq!(handle.await.unwrap(), answer);
    }

    #[test]
    fn persian_questions_get_a_persian_lead() {
        let request = ChatRequest {
            model: NAME.into(),
            system: String::new(),
            messages: vec![],
            question: "پایگاه داده چیست؟".into(),
            sources: vec![source("پایگاه داده مجموعه‌ای از داده‌های سازمان‌یافته است که در رایانه نگهداری می‌شود.")],
            persian: true,
        };
        let answer = compose(&request);
        assert!(answer.starts_with("بر اساس اسناد شما"));
        assert!(answer.ends_with("[1]"));
    }
}
