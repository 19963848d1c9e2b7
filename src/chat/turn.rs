//! One question turn, independent of the transport: admit against the quota → open the session →
//! embed the question → retrieve → build the prompt → stream the model's tokens → record the
//! message and its ledger rows. Frames go to a [`FrameSink`]; the WebSocket is one (see
//! [`super::ws`]), a test's channel another.
//!
//! A turn ends with exactly one `done` or `error` frame. A cancelled turn (a cancel frame, a
//! disconnect) stops the model and still saves and meters what was produced.

use std::{future::Future, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    prompt,
    record::{Record, Recorder, Saved},
    store,
};
use crate::{
    config::Config,
    embed::{Embedder, Embeddings},
    ingestion::chunk::count_tokens,
    llm::{ChatModel, ChatRequest, Usage, offline},
    retrieval::{self, Params, Source},
    text::is_stray_control,
    usage::{gate::QuotaGate, quota::AdmitError},
};

/// A quota hold outlives any answer (the model's timeout applies per piece of the stream).
const HOLD_FOR: Duration = Duration::from_secs(15 * 60);
/// The system prompt, citation labels and message framing, over-estimated.
const PROMPT_OVERHEAD_TOKENS: usize = 600;
/// Earlier turns of a session put into the prompt, at most.
const HISTORY_TURNS: i64 = 20;

/// What the server sends, per question: `start`, `sources`, `token`…, `done`; or `error`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = ServerFrame)]
pub enum Frame<'a> {
    Start {
        session_id: Uuid,
        message_id: Uuid,
    },
    Sources {
        sources: &'a [Source],
    },
    Token {
        content: &'a str,
    },
    Done {
        message_id: Uuid,
        status: &'static str,
        model: &'a str,
        usage: FrameUsage,
    },
    Error {
        code: &'a str,
        message: &'a str,
        /// seconds until a refused request may succeed
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
        /// when a used-up quota starts again
        #[serde(skip_serializing_if = "Option::is_none")]
        resets_at: Option<DateTime<Utc>>,
    },
}

impl<'a> Frame<'a> {
    pub fn error(code: &'a str, message: &'a str) -> Self {
        Frame::Error { code, message, retry_after: None, resets_at: None }
    }

    /// Whether this frame ends a turn.
    pub fn is_last(&self) -> bool {
        matches!(self, Frame::Done { .. } | Frame::Error { .. })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FrameUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// Where a turn's frames go. A sink whose client has gone drops them; the turn goes on and is
/// saved.
pub trait FrameSink: Send + Sync + 'static {
    fn send(&self, frame: Frame<'_>) -> impl Future<Output = ()> + Send;
}

/// A question as asked, cleaned: control characters carry no meaning in a question (and
/// Postgres text cannot hold NUL), surrounding white space neither.
pub fn clean_question(content: &str, max_chars: usize) -> Result<String, (&'static str, String)> {
    let question: String = content.chars().filter(|c| !is_stray_control(*c)).collect::<String>().trim().to_owned();
    if question.is_empty() {
        return Err(("empty_question", "the question is empty".to_owned()));
    }
    if question.chars().count() > max_chars {
        return Err(("question_too_long", format!("questions are limited to {max_chars} characters")));
    }
    Ok(question)
}

/// What turns use of the process: cheap to clone, one per turn.
#[derive(Clone)]
pub struct Services {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub quotas: Arc<QuotaGate>,
    pub recorder: Recorder,
    /// `Err` when no embedder could be loaded (a turn answers `embedding_unavailable`)
    pub embedder: Result<Arc<dyn Embedder>, String>,
    /// the models of chunks not yet re-embedded with the configured one
    pub previous_embedders: Arc<crate::embed::Previous>,
    /// the cross-language model (`CROSS_LANGUAGE_MODEL`), when configured and loaded
    pub cross_embedder: Option<Arc<dyn Embedder>>,
    pub tenant_models: Arc<crate::retrieval::TenantModels>,
}

/// A question embedded by one model, and what that model searches.
struct Asked {
    embedder: Arc<dyn Embedder>,
    /// `None` when the model cannot read the question ([`crate::embed::reads`]): it searches its
    /// chunks by the question's words alone, so the question is not embedded (nor charged) by it
    embeddings: Option<Embeddings>,
    /// the tenant has chunks of this model: they are searched by it
    own: bool,
    /// it is the cross-language model, and documents on the other side of the script line have
    /// its vectors: those are searched by it
    cross: bool,
}

/// A question's vectors, and its side of the script line.
struct Embedded {
    asked: Vec<Asked>,
    latin: bool,
}

impl Embedded {
    /// The model the question's embedding is charged under: the first that embedded it (the
    /// configured one, unless it could not read the question), else the configured one (nothing
    /// to charge then).
    fn charged_model(&self) -> &str {
        let embedded = self.asked.iter().find(|a| a.embeddings.is_some());
        embedded.or(self.asked.first()).map_or("", |a| a.embedder.model())
    }
}

/// Gives back a hold in a transaction of its own.
async fn release(db: &PgPool, tenant: Uuid, hold: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = crate::db::for_tenant(db, tenant).await?;
    crate::usage::quota::release(&mut *tx, tenant, hold).await?;
    tx.commit().await
}

/// One question of one caller, with the model that answers it and where its frames go.
pub struct Turn<S> {
    pub services: Services,
    pub model: Arc<dyn ChatModel>,
    /// the model asked for (recorded with the message and the usage)
    pub model_name: String,
    pub tenant: Uuid,
    pub user: Uuid,
    pub sink: S,
}

/// What the model produced and how the generation ended.
struct Generated {
    answer: String,
    status: &'static str,
    failure: Option<(&'static str, String)>,
    model: String,
    usage: Usage,
}

impl<S: FrameSink> Turn<S> {
    /// Runs the turn to its last frame. `session` continues one of the user's sessions; `None`
    /// starts one.
    pub async fn run(self, session: Option<Uuid>, question: String, cancel: CancellationToken) {
        crate::metrics::get().questions.inc();
        let mut hold = None;
        let result = self.answer(session, &question, cancel, &mut hold).await;
        // the hold goes with the answer's ledger rows; an answer that wrote none gives it back
        if let Some(id) = hold
            && let Err(e) = release(&self.services.db, self.tenant, id).await
        {
            tracing::warn!(error = %e, "could not release a quota hold (it expires on its own)");
        }
        if let Err(e) = result {
            if crate::error::is_unavailable(&e) {
                tracing::warn!(error = format!("{e:#}"), "chat answer failed: a backing service is unreachable");
                let message = "a backing service is unavailable, try again shortly";
                self.sink.send(Frame::error("service_unavailable", message)).await;
            } else {
                tracing::error!(error = format!("{e:#}"), "chat answer failed");
                self.sink.send(Frame::error("internal_error", "the answer could not be completed")).await;
            }
        }
    }

    /// The most one answer to `question` may spend: the question embedded and in the prompt,
    /// the context, the prompt's own words, and the longest answer.
    fn most_tokens(&self, question: &str) -> i64 {
        let chat = &self.services.config.chat;
        let answer = if self.model_name == offline::NAME { chat.context_tokens } else { chat.max_answer_tokens };
        (2 * count_tokens(question) + chat.context_tokens + PROMPT_OVERHEAD_TOKENS + answer) as i64
    }

    async fn answer(
        &self,
        session: Option<Uuid>,
        question: &str,
        cancel: CancellationToken,
        hold: &mut Option<Uuid>,
    ) -> anyhow::Result<()> {
        let asked = std::time::Instant::now();
        if !self.admit(question, hold).await? {
            return Ok(());
        }
        let Some((session, title)) = self.open_session(session, question).await? else {
            return Ok(());
        };
        let message_id = Uuid::now_v7();
        self.sink.send(Frame::Start { session_id: session, message_id }).await;

        let Some(embedded) = self.embed(question).await else {
            self.sink.send(Frame::error("embedding_unavailable", "questions cannot be searched right now")).await;
            return Ok(());
        };
        let request = self.prompt(&embedded, question, session, title.is_none()).await?;
        self.sink.send(Frame::Sources { sources: &request.sources }).await;

        let mut generated = self.generate(&request, cancel, asked).await;
        let saved = self
            .services
            .recorder
            .save(Record {
                message_id,
                tenant: self.tenant,
                user: self.user,
                session,
                title,
                question: question.to_owned(),
                answer: std::mem::take(&mut generated.answer),
                sources: serde_json::to_value(&request.sources)?,
                model: generated.model.clone(),
                prompt_tokens: generated.usage.prompt_tokens as i32,
                completion_tokens: generated.usage.completion_tokens as i32,
                status: generated.status,
                error_code: generated.failure.as_ref().map(|f| f.0),
                embedding_model: embedded.charged_model().to_owned(),
                embedding_tokens: embedded.asked.iter().flat_map(|a| &a.embeddings).map(|e| e.tokens as i64).sum(),
                hold: *hold,
            })
            .await?;
        *hold = None;
        let answers = &crate::metrics::get().answers;
        answers
            .get_or_create(&crate::metrics::Status {
                status: if saved == Saved::ChargedOnly { "not_kept" } else { generated.status },
            })
            .inc();

        if saved == Saved::ChargedOnly {
            // what was said is charged, but there is nowhere left to keep it
            let message = "the chat session was deleted while it was answered: the answer was not kept";
            self.sink.send(Frame::error("session_not_found", message)).await;
            return Ok(());
        }
        self.finish(message_id, &generated).await;
        Ok(())
    }

    /// Admits the turn against the quotas, holding what it may spend; false when a quota is used
    /// up (the refusal is sent).
    async fn admit(&self, question: &str, hold: &mut Option<Uuid>) -> anyhow::Result<bool> {
        match self.services.quotas.admit(self.tenant, Some(self.user), self.most_tokens(question), HOLD_FOR).await {
            Ok(h) => {
                *hold = h;
                Ok(true)
            }
            Err(AdmitError::Database(e)) => Err(e.into()),
            Err(AdmitError::Exceeded(exceeded)) => {
                let message = exceeded.message();
                self.sink
                    .send(Frame::Error {
                        code: "quota_exceeded",
                        message: &message,
                        retry_after: Some(exceeded.retry_after().as_secs().max(1)),
                        resets_at: Some(exceeded.resets_at),
                    })
                    .await;
                Ok(false)
            }
        }
    }

    /// The session the answer goes to, with a title when this question starts it (a new session
    /// is written together with its first message, at the end); `None` when the user has no such
    /// session (the refusal is sent).
    async fn open_session(
        &self,
        session: Option<Uuid>,
        question: &str,
    ) -> anyhow::Result<Option<(Uuid, Option<String>)>> {
        let Some(id) = session else {
            return Ok(Some((Uuid::now_v7(), Some(question.chars().take(80).collect()))));
        };
        let found = store::find_session(
            &mut *crate::db::for_tenant(&self.services.db, self.tenant).await?,
            self.tenant,
            self.user,
            id,
        )
        .await?;
        if found.is_some() {
            return Ok(Some((id, None)));
        }
        self.sink.send(Frame::error("session_not_found", "no such chat session")).await;
        Ok(None)
    }

    /// The turn's last frame: `done` with the usage, or the model's failure.
    async fn finish(&self, message_id: Uuid, generated: &Generated) {
        if let Some((code, message)) = &generated.failure {
            self.sink.send(Frame::error(code, message)).await;
            return;
        }
        let usage = generated.usage;
        self.sink
            .send(Frame::Done {
                message_id,
                status: generated.status,
                model: &generated.model,
                usage: FrameUsage {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    total_tokens: usage.prompt_tokens + usage.completion_tokens,
                },
            })
            .await;
    }

    /// The question's vector by the configured model — and, while a model switch re-embeds the
    /// tenant's documents, by each model their chunks still hold (those documents stay
    /// searchable meanwhile), and by the cross-language model when documents on the other side of
    /// the script line have its vectors — or `None` when questions cannot be embedded now
    /// (logged). The configured model's comes first; every model's tokens are charged. A model
    /// that cannot read the question (all-MiniLM-L6-v2 and a Persian one) does not embed it: its
    /// chunks are searched by the question's words alone, whatever its vector.
    async fn embed(&self, question: &str) -> Option<Embedded> {
        let embedder = match &self.services.embedder {
            Ok(e) => e.clone(),
            Err(e) => {
                tracing::error!(error = %e, "no embedder for questions");
                return None;
            }
        };
        let latin = crate::embed::script(question) == "latin";
        let configured = embedder.model().to_owned();
        let mut wanted = vec![(embedder, true, false)];
        match self.services.tenant_models.get(&self.services.db, self.tenant).await {
            Ok(searchable) => {
                for model in searchable.models.iter().filter(|m| **m != configured) {
                    // a model this process cannot run: those chunks wait for their re-embedding
                    wanted.extend(self.services.previous_embedders.get(model).map(|e| (e, true, false)));
                }
                if let Some(cross) = &self.services.cross_embedder
                    && searchable.crosses(cross.model(), latin)
                {
                    match wanted.iter_mut().find(|(e, ..)| e.model() == cross.model()) {
                        Some(found) => found.2 = true,
                        None => wanted.push((cross.clone(), false, true)),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the tenant's embedding models"),
        }
        let results = futures_util::future::join_all(wanted.iter().map(|(e, ..)| async {
            if crate::embed::reads(e.model(), question) { e.embed_query(question).await.map(Some) } else { Ok(None) }
        }))
        .await;
        let mut asked = Vec::with_capacity(wanted.len());
        for ((embedder, own, cross), result) in wanted.into_iter().zip(results) {
            match result {
                Ok(embeddings) => asked.push(Asked { embedder, embeddings, own, cross }),
                Err(e) => {
                    tracing::warn!(model = embedder.model(), error = %e, "question embedding failed");
                    if asked.is_empty() {
                        return None;
                    }
                }
            }
        }
        Some(Embedded { asked, latin })
    }

    /// Retrieves the passages and builds the prompt, with the session's earlier turns.
    async fn prompt(
        &self,
        embedded: &Embedded,
        question: &str,
        session: Uuid,
        continued: bool,
    ) -> anyhow::Result<ChatRequest> {
        let chat = &self.services.config.chat;
        let params = Params { k: chat.k, ..Params::default() };
        let mut tx = crate::db::for_retrieval(&self.services.db, self.tenant).await?;
        let floor = |model: &str| chat.min_similarity.unwrap_or_else(|| crate::embed::similarity_floor(model));
        let own: Vec<retrieval::Query<'_>> = embedded
            .asked
            .iter()
            .filter(|a| a.own)
            .map(|a| retrieval::Query {
                space: retrieval::Space { model: a.embedder.model(), dims: a.embedder.dimensions() },
                vector: a.embeddings.as_ref().map(|e| e.vectors[0].as_slice()),
                min_similarity: floor(a.embedder.model()),
            })
            .collect();
        let cross = embedded.asked.iter().find(|a| a.cross).map(|c| retrieval::Query {
            space: retrieval::Space { model: c.embedder.model(), dims: c.embedder.dimensions() },
            vector: c.embeddings.as_ref().map(|e| e.vectors[0].as_slice()),
            min_similarity: chat.min_similarity.unwrap_or(crate::embed::CROSS_LANGUAGE_FLOOR),
        });
        let sources =
            retrieval::search_question(&mut tx, self.tenant, &own, cross, embedded.latin, question, &params).await?;
        // a session started by this question has no earlier turns
        let history =
            if continued { store::history(&mut *tx, self.tenant, session, HISTORY_TURNS).await? } else { Vec::new() };
        drop(tx);
        Ok(prompt::build(&self.model_name, question, sources, &history, chat.context_tokens))
    }

    /// Streams the model's answer to the sink until it ends, fails or is cancelled.
    /// `asked`: when the question arrived, for the time to the first token.
    async fn generate(&self, request: &ChatRequest, cancel: CancellationToken, asked: std::time::Instant) -> Generated {
        let ttft = &crate::metrics::get().time_to_first_token;
        if request.sources.is_empty() {
            // nothing relevant: say so, without a model
            let answer = prompt::nothing_found(request.persian).to_owned();
            ttft.observe(asked.elapsed().as_secs_f64());
            self.sink.send(Frame::Token { content: &answer }).await;
            return Generated {
                answer,
                status: "complete",
                failure: None,
                model: "none".to_owned(),
                usage: Usage::default(),
            };
        }
        let mut answer = String::new();
        let mut status = "complete";
        let mut failure = None;
        let (tx, mut rx) = mpsc::channel::<String>(32);
        let generation = self.model.stream(request, tx);
        tokio::pin!(generation);
        let mut reported: Option<Usage> = None;
        let mut done = false;
        while !done {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    status = "cancelled";
                    break;
                }
                token = rx.recv() => match token {
                    Some(t) => {
                        if answer.is_empty() {
                            ttft.observe(asked.elapsed().as_secs_f64());
                        }
                        answer.push_str(&t);
                        self.sink.send(Frame::Token { content: &t }).await;
                    }
                    None => done = true,
                },
                result = &mut generation, if reported.is_none() && !done => {
                    match result {
                        Ok(u) => reported = Some(u.unwrap_or_default()),
                        Err(e) => {
                            tracing::warn!(code = e.code(), detail = e.detail(), "chat model failed");
                            status = "failed";
                            failure = Some((e.code(), e.to_string()));
                            break;
                        }
                    }
                    // drain what the model sent before it returned
                    while let Ok(t) = rx.try_recv() {
                        answer.push_str(&t);
                        self.sink.send(Frame::Token { content: &t }).await;
                    }
                    done = true;
                }
            }
        }
        let usage = match reported {
            Some(u) if u.prompt_tokens > 0 || u.completion_tokens > 0 => u,
            // counted here only when the model reported nothing (cancelled, failed, or a server
            // without usage chunks)
            _ => {
                Usage { prompt_tokens: prompt::prompt_tokens(request), completion_tokens: count_tokens(&answer) as u32 }
            }
        };
        Generated { answer, status, failure, model: self.model_name.clone(), usage }
    }
}
