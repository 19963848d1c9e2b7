//! Retrieval: the tenant's chunks nearest to a question by cosine (pgvector HNSW with iterative
//! index scans, so a small tenant inside a big shared index keeps its recall), plus full-text
//! matches (`simple` configuration, so every language works), fused by reciprocal rank fusion.
//! Only chunks of ready documents of the caller's tenant, embedded with the current model, are
//! ever considered; a similarity floor keeps unrelated text out.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct Params {
    /// how many fused results to return
    pub k: usize,
    /// candidates taken from each of the two searches
    pub candidates: usize,
    /// minimum cosine similarity for a chunk to count as relevant
    pub min_similarity: f32,
    pub vector_weight: f32,
    pub text_weight: f32,
}

impl Default for Params {
    fn default() -> Self {
        Self { k: 6, candidates: 30, min_similarity: 0.25, vector_weight: 1.0, text_weight: 0.5 }
    }
}

/// Full-text matches ranked per question, at most.
const TEXT_MATCHES: usize = 2000;

/// Reciprocal rank fusion constant (the usual 60).
const RRF_K: f32 = 60.0;

/// Words too common to tell passages apart (English and Persian). They stay in the index (the
/// `simple` configuration knows no language) but are left out of the full-text query: each would
/// match nearly every chunk of a tenant — slow to collect, and noise in the ranking.
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "after",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "been",
    "being",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "for",
    "from",
    "had",
    "has",
    "have",
    "he",
    "her",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "me",
    "more",
    "most",
    "my",
    "no",
    "not",
    "of",
    "on",
    "or",
    "our",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "to",
    "us",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "و",
    "در",
    "به",
    "از",
    "که",
    "این",
    "آن",
    "را",
    "با",
    "است",
    "برای",
    "یک",
    "تا",
    "بر",
    "هم",
    "نیز",
    "چه",
    "چیست",
    "چیه",
    "کدام",
    "می",
    "ها",
    "های",
    "هست",
    "هستند",
    "بود",
    "شود",
    "کند",
    "کرد",
    "شد",
    "اند",
    "ای",
    "ما",
    "من",
    "شما",
    "او",
    "آنها",
    "یا",
    "اگر",
    "پس",
    "چون",
    "باید",
    "دارد",
    "داشت",
    "چگونه",
    "چطور",
    "کجا",
    "کی",
    "آیا",
];

/// The question as a full-text query: its words without the stop words (all of them if nothing
/// else is left).
pub fn text_query(question: &str) -> String {
    let words: Vec<&str> =
        question.split(|c: char| !c.is_alphanumeric() && c != '\u{200c}').filter(|w| !w.is_empty()).collect();
    let kept: Vec<&str> = words.iter().copied().filter(|w| !STOP_WORDS.contains(&w.to_lowercase().as_str())).collect();
    if kept.is_empty() { words.join(" ") } else { kept.join(" ") }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Source {
    pub document_id: Uuid,
    pub filename: String,
    pub page: i32,
    pub page_to: i32,
    pub score: f32,
    pub similarity: f32,
    pub snippet: String,
    #[serde(skip)]
    pub text: String,
    #[serde(skip)]
    pub chunk_id: i64,
    /// o200k tokens of `text`, as counted at ingestion
    #[serde(skip)]
    pub token_count: i32,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    document_id: Uuid,
    filename: String,
    page_from: i32,
    page_to: i32,
    text: String,
    token_count: i32,
    similarity: f32,
    score: f32,
}

/// SQL text for a model name (configuration, not user input; quoted all the same).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The CTEs that find and rank a question's full-text matches ($2 tenant, $3 limit, $4 text):
/// any of the question's words (a plain AND would rarely match a natural question). Common
/// words can match most of a big tenant's chunks: at most TEXT_MATCHES matches are ranked.
fn text_ctes(model: &str) -> String {
    format!(
        "with q as (select nullif(replace(plainto_tsquery('simple', $4)::text, '&', '|'), '')::tsquery as query),
         -- matched and ranked by docuchat_text_ranked (migration 0012): the tenant of the
         -- transaction only, through the (tenant_id, tsv) index, which row-level security would
         -- keep the planner from using; ts_rank, not ts_rank_cd: the cover-density rank zeroes
         -- 32 KiB per query term for every row it ranks, which made it most of the database's
         -- work per question
         ranked as (
             select r.id, r.rank from q, docuchat_text_ranked({model}, q.query, {TEXT_MATCHES}, ($3 * 2)::int) r
         )",
        model = literal(model)
    )
}

/// The hybrid statement ($1 query vector, $2 tenant, $3 candidates per list, $4 question text,
/// $5 and $6 the weights of the vector and the full-text list, $7 the similarity floor, $8 how
/// many to return): both candidate lists, fused by reciprocal rank fusion, in one statement; only
/// the winners' texts leave the database. The model and dimension are written into the SQL so
/// that the planner can match the partial HNSW index of this model (a bound parameter would not
/// prove the index's predicate).
pub fn hybrid_sql(model: &str, dims: usize) -> String {
    let distance = format!("c.embedding::vector({dims}) <=> $1::vector({dims})");
    format!(
        "{ctes},
         by_vector as (
             select c.id, (1 - ({distance}))::real as similarity
               from chunks c join documents d on d.tenant_id = c.tenant_id and d.id = c.document_id
              where c.tenant_id = $2 and c.embedding_model = {model} and d.status = 'ready'
              order by {distance} limit $3
         ),
         by_text as (
             select c.id, (1 - ({distance}))::real as similarity, r.rank
               from ranked r
               join chunks c on c.id = r.id
               join documents d on d.tenant_id = c.tenant_id and d.id = c.document_id
              where d.status = 'ready'
              order by r.rank desc limit $3
         ),
         -- each list's rank counts every candidate, those under the floor too
         listed as (
             select id, similarity, $5::real / ({RRF_K} + row_number() over (order by similarity desc)) as part
               from by_vector
             union all
             select id, similarity, $6::real / ({RRF_K} + row_number() over (order by rank desc)) as part
               from by_text
         ),
         fused as (
             select id, max(similarity) as similarity, sum(part)::real as score
               from listed where similarity >= $7
              group by id
              order by score desc, similarity desc limit $8
         )
         select f.id, c.document_id, d.filename, c.page_from, c.page_to, c.text, c.token_count, f.similarity, f.score
           from fused f
           join chunks c on c.id = f.id
           join documents d on d.tenant_id = c.tenant_id and d.id = c.document_id
          order by f.score desc, f.similarity desc",
        ctes = text_ctes(model),
        model = literal(model)
    )
}

/// Which vectors to search: those of one embedding model, of its dimension.
#[derive(Clone, Copy, Debug)]
pub struct Space<'a> {
    pub model: &'a str,
    pub dims: usize,
}

/// The tenant's `k` nearest chunks by cosine: through the model's HNSW index, or, with `exact`,
/// by scanning the tenant's rows (the reference for recall measurements). Returns (chunk id,
/// similarity) pairs, nearest first.
pub async fn nearest(
    db: &PgPool,
    tenant_id: Uuid,
    space: Space<'_>,
    query_vector: &[f32],
    k: usize,
    ef_search: u32,
    exact: bool,
) -> Result<Vec<(i64, f32)>, sqlx::Error> {
    let (model, dims) = (space.model, space.dims);
    let distance = format!("c.embedding::vector({dims}) <=> $1::vector({dims})");
    // `+ 0` hides the expression from the planner, so no index is used
    let order = if exact { format!("({distance}) + 0") } else { distance.clone() };
    let sql = format!(
        "select c.id, (1 - ({distance}))::real from chunks c
          where c.tenant_id = $2 and c.embedding_model = {model} order by {order} limit $3",
        model = literal(model)
    );
    let mut tx = crate::db::for_tenant(db, tenant_id).await?;
    sqlx::query(
        "select set_config('hnsw.ef_search', $1, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)",
    )
    .bind(ef_search.clamp(1, 1000).to_string())
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(pgvector::Vector::from(query_vector.to_vec()))
        .bind(tenant_id)
        .bind(k as i64)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Hybrid search: vector and full-text candidates in one statement (one round trip), fused.
/// The HNSW settings (search breadth, iterative scans) are session settings of the pool's
/// connections (see `db::pool_options`).
pub async fn search(
    db: impl sqlx::PgExecutor<'_>,
    tenant_id: Uuid,
    space: Space<'_>,
    query_vector: &[f32],
    query_text: &str,
    params: &Params,
) -> Result<Vec<Source>, sqlx::Error> {
    let sql = hybrid_sql(space.model, space.dims);
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(pgvector::Vector::from(query_vector.to_vec()))
        .bind(tenant_id)
        .bind(params.candidates as i64)
        .bind(text_query(query_text))
        .bind(params.vector_weight)
        .bind(params.text_weight)
        .bind(params.min_similarity)
        .bind(params.k as i64)
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Source {
            document_id: r.document_id,
            filename: r.filename,
            page: r.page_from,
            page_to: r.page_to,
            score: r.score,
            similarity: r.similarity,
            snippet: snippet(&r.text, 280),
            text: r.text,
            chunk_id: r.id,
            token_count: r.token_count,
        })
        .collect())
}

/// The start of a text, cut at a word boundary, with an ellipsis when cut.
pub fn snippet(text: &str, max_chars: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max_chars {
        return flat;
    }
    let cut: String = flat.chars().take(max_chars).collect();
    let end = cut.rfind(' ').filter(|i| *i > max_chars / 2).unwrap_or(cut.len());
    format!("{}…", &cut[..end])
}

#[cfg(test)]
mod tests;
