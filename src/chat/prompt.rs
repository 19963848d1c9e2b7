//! Prompts: a system prompt in the question's language (English or Persian), the passages as
//! numbered context within a token budget, and earlier turns of the session as far as the budget
//! allows.

use crate::{
    ingestion::chunk::count_tokens,
    llm::{ChatRequest, Speaker},
    retrieval::Source,
};

const SYSTEM_EN: &str = "You answer questions using only the numbered passages from the user's own documents. \
Cite the passages you use as [1], [2], … right after the statement they support. If the passages do not \
contain the answer, say that the documents do not say, and do not guess. Answer in the language of the question.";

const SYSTEM_FA: &str = "شما فقط با استفاده از بخش‌های شماره‌دار اسناد خود کاربر به پرسش‌ها پاسخ می‌دهید. \
هر بخشی را که استفاده می‌کنید بلافاصله پس از جمله‌ی مربوط با [1]، [2]، … ارجاع دهید. اگر پاسخ در این بخش‌ها \
نیست، بگویید که اسناد در این باره چیزی نمی‌گویند و حدس نزنید. به زبان فارسی پاسخ دهید.";

/// The system prompts' token counts, counted once.
static SYSTEM_TOKENS: std::sync::LazyLock<[usize; 2]> =
    std::sync::LazyLock::new(|| [count_tokens(SYSTEM_EN), count_tokens(SYSTEM_FA)]);

/// Whether a text is mostly in Arabic script (Persian questions get the Persian prompt).
pub fn is_persian(text: &str) -> bool {
    let (mut arabic, mut other) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        if matches!(c as u32, 0x0600..=0x06FF | 0x0750..=0x077F | 0xFB50..=0xFDFF | 0xFE70..=0xFEFF) {
            arabic += 1;
        } else {
            other += 1;
        }
    }
    arabic > other
}

/// The answer when nothing relevant was found (no model is called).
pub fn nothing_found(persian: bool) -> &'static str {
    if persian {
        "در اسناد شما چیزی درباره‌ی این پرسش پیدا نکردم."
    } else {
        "I could not find anything about this in your documents."
    }
}

/// Builds the request: passages first (best first) until the budget is used, then as many of
/// the most recent earlier turns as still fit.
pub fn build(
    model: &str,
    question: &str,
    sources: Vec<Source>,
    history: &[(String, String)],
    budget: usize,
) -> ChatRequest {
    let persian = is_persian(question);
    let system = if persian { SYSTEM_FA } else { SYSTEM_EN }.to_owned();
    let mut used = SYSTEM_TOKENS[usize::from(persian)] + count_tokens(question) + 16;
    let mut kept = Vec::new();
    let mut context = String::new();
    for source in sources {
        let n = kept.len() + 1;
        let block = format!("[{n}] ({}, p. {})\n{}\n\n", source.filename, source.page, source.text.trim());
        // the passage's count from ingestion, plus its header
        let cost = if source.token_count > 0 {
            source.token_count as usize + count_tokens(&source.filename) + 8
        } else {
            count_tokens(&block)
        };
        if used + cost > budget && !kept.is_empty() {
            break;
        }
        used += cost;
        context.push_str(&block);
        kept.push(source);
    }
    let mut turns: Vec<(Speaker, String)> = Vec::new();
    for (q, a) in history.iter().rev() {
        let cost = count_tokens(q) + count_tokens(a) + 8;
        if used + cost > budget {
            break;
        }
        used += cost;
        turns.push((Speaker::Assistant, a.clone()));
        turns.push((Speaker::User, q.clone()));
    }
    turns.reverse();
    let label = if persian { ("بخش‌ها", "پرسش") } else { ("Passages", "Question") };
    turns.push((Speaker::User, format!("{}:\n\n{}{}: {}", label.0, context, label.1, question)));
    ChatRequest {
        model: model.to_owned(),
        system,
        messages: turns,
        question: question.to_owned(),
        sources: kept,
        persian,
    }
}

/// Tokens of the whole prompt, as a generative model would read it.
pub fn prompt_tokens(request: &ChatRequest) -> u32 {
    let text: usize =
        count_tokens(&request.system) + request.messages.iter().map(|(_, m)| count_tokens(m) + 4).sum::<usize>();
    text as u32
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn source(text: &str) -> Source {
        Source {
            document_id: Uuid::nil(),
            filename: "guide.pdf".into(),
            page: 3,
            page_to: 3,
            score: 1.0,
            similarity: 0.8,
            snippet: String::new(),
            text: text.into(),
            chunk_id: 1,
            token_count: count_tokens(text) as i32,
        }
    }

    #[test]
    fn language_is_chosen_by_script() {
        assert!(is_persian("چگونه بسته‌ها را نصب کنم؟"));
        assert!(is_persian("نصب LaTeX روی لینوکس چگونه است؟"));
        assert!(!is_persian("How do I install LaTeX?"));
        let r = build("m", "پایگاه داده چیست؟", vec![source("متن")], &[], 3000);
        assert!(r.persian && r.system.starts_with("شما"));
        let r = build("m", "What is a database?", vec![source("text")], &[], 3000);
        assert!(!r.persian && r.system.starts_with("You answer"));
    }

    #[test]
    fn context_is_numbered_and_fits_the_budget() {
        let long = "word ".repeat(400);
        let sources = vec![source("first passage"), source(&long), source(&long), source(&long)];
        let history = vec![("old question".to_owned(), "old answer".to_owned())];
        let r = build("m", "What now?", sources, &history, 1000);
        let last = &r.messages.last().unwrap().1;
        assert!(last.contains("[1] (guide.pdf, p. 3)\nfirst passage"));
        assert!(last.contains("[2]"));
        assert!(!last.contains("[4]"), "the budget allows only some passages");
        assert!(r.sources.len() < 4);
        assert!(prompt_tokens(&r) <= 1000 + 50);
        assert!(last.ends_with("Question: What now?"));
    }

    #[test]
    fn earlier_turns_come_first_when_they_fit() {
        let history = vec![("q1".to_owned(), "a1".to_owned()), ("q2".to_owned(), "a2".to_owned())];
        let r = build("m", "q3", vec![source("p")], &history, 3000);
        let texts: Vec<&str> = r.messages.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(&texts[..4], &["q1", "a1", "q2", "a2"]);
        assert_eq!(r.messages[0].0, Speaker::User);
        assert_eq!(r.messages[1].0, Speaker::Assistant);
    }
}
