//! Retrieval: the tenant's chunks nearest to a question by cosine (pgvector HNSW with iterative
//! index scans, so a small tenant inside a big shared index keeps its recall), plus full-text
//! candidates ranked by BM25 over impact-ordered postings (`simple` configuration, so every
//! language works; see [`text_ctes`]), fused by reciprocal rank fusion.
//! Only chunks of the caller's tenant are ever considered, of one embedding model per search, and
//! of documents that have not failed: a document's chunks are replaced in the transaction that
//! marks it ready, so a document being re-embedded (queued or processing again, after a model
//! switch or a retry) is found by its earlier chunks until the new ones replace them. A similarity
//! floor keeps unrelated text out.

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
        Self { k: 6, candidates: 30, min_similarity: 0.25, vector_weight: 1.0, text_weight: 1.0 }
    }
}

/// Postings read per question term: each term's best chunks by BM25 impact (migration 0016). The
/// union of these lists, ranked by the terms each chunk was found for, gives four times as many
/// candidates as fusion takes; those are then scored exactly over every term. A chunk can be
/// missed only if it is in none of its terms' best lists and still belongs among the best overall
/// (a test holds the result to exhaustive BM25 on a big tenant, order included).
const TERM_POSTINGS: usize = 200;

/// Question terms searched, at most: the rarest ones the tenant has (a long question's common
/// words add cost, not discrimination).
const MAX_TERMS: usize = 32;
// each term is a bit of an `int8` in the full-text search (the terms a chunk was found for)
const _: () = assert!(MAX_TERMS <= 63);

/// Reciprocal rank fusion constant (the usual 60).
const RRF_K: f32 = 60.0;

/// Words too common to tell passages apart (English and Persian). They are left out of the
/// full-text query and have no postings (migration 0016 keeps the same list in
/// `docuchat_stop_words()`; a test holds the two equal): each would match nearly every chunk.
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

/// The CTEs that find and rank a question's full-text candidates (the placeholders of the tenant,
/// the number of candidates and the question's text are given): BM25 over the tenant's postings.
/// The question's terms (as `to_tsvector('simple')` cuts them, the same as the chunks' — so every
/// language works) with their document frequencies, the rarest `MAX_TERMS`; each term's best
/// `TERM_POSTINGS` chunks by impact, read from the index in that order; the best of the chunks
/// found scored exactly (sum of idf × impact over every term). A term found in at most
/// `TERM_POSTINGS` chunks had all of its postings read, so its part of a candidate's score is
/// already exact, and so is the part of every term a candidate was found for (the posting read
/// is its impact): only the cut terms it was not found for are looked up, in one index-only scan
/// of the candidate's own postings per candidate (none, in a small tenant; the (chunk, term) index
/// holds the tenant for the row-level security's check, migration 0021 — without it the planner
/// read each cut term's whole list for every candidate instead). Measured on the 20k-chunk tenant with a 13-term question,
/// that scan read 423 buffers where a lookup per cut term read 2,060. Nothing here grows with the
/// tenant: a question reads at most `MAX_TERMS × TERM_POSTINGS` postings and `MAX_TERMS` per
/// candidate, however many chunks contain its words.
fn text_ctes(tenant: &str, candidates: &str, text: &str) -> String {
    format!(
        "with terms as (
             select t.term, d.df
               from (select distinct u.lexeme as term from unnest(to_tsvector('simple', {text})) u) t
              -- one key lookup per term (a join could be planned as a read of all the tenant's terms)
              cross join lateral (
                    select d.df from text_df d where d.tenant_id = {tenant} and d.term = t.term limit 1
              ) d
              order by d.df, t.term
              limit {MAX_TERMS}
         ),
         -- each term's idf, and its bit in a chunk's set of terms found
         weighted as (
             select t.term, t.df, ln(1 + (greatest(n.df, t.df) - t.df + 0.5) / (t.df + 0.5))::float8 as idf,
                    1::int8 << (row_number() over (order by t.df, t.term) - 1)::int as bit
               from terms t, text_df n
              where n.tenant_id = {tenant} and n.term = ''
         ),
         -- each term's best chunks, scored by the terms they were found for: a lower bound, exact
         -- for every term whose posting for the chunk was read
         found as (
             select p.chunk_id as id, sum(w.idf * p.impact) as partial, bit_or(w.bit) as seen
               from weighted w
              cross join lateral (
                    select p.chunk_id, p.impact from text_postings p
                     where p.tenant_id = {tenant} and p.term = w.term
                     order by p.impact desc, p.chunk_id
                     limit {TERM_POSTINGS}
              ) p
              group by p.chunk_id
              order by partial desc, p.chunk_id
              limit {candidates} * 4
         ),
         -- the best of them scored exactly: their impact for each cut term they were not found
         -- for, read in one index scan per chunk (a join here would be planned as a scan of every
         -- posting of the terms)
         ranked as (
             select f.id,
                    (f.partial + case when f.seen & c.bits = c.bits then 0 else coalesce(
                         (select sum(w.idf * p.impact)
                            from text_postings p
                            join weighted w on w.term = p.term
                           where p.chunk_id = f.id and p.tenant_id = {tenant}
                             and p.term = any(array(select u.term from weighted u
                                                     where u.df > {TERM_POSTINGS} and f.seen & u.bit = 0))), 0)
                     end)::real as rank
               from found f,
                    -- the cut terms' bits
                    (select coalesce(bit_or(w.bit) filter (where w.df > {TERM_POSTINGS}), 0) as bits from weighted w) c
         )"
    )
}

/// Tenants of at most [`exact_scan_max_chunks`] chunks are searched by distance to every one of
/// their vectors; bigger ones through the model's HNSW index. An exact scan's cost is about
/// proportional to the dimensions it reads; the index's hardly depends on the tenant. Measured on
/// real text with 384 dimensions (the vectors in their rows, migration 0017): about 0.6 µs a
/// chunk (150 chunks 0.2 ms, 3,991 chunks 2.4 ms), against 1–1.5 ms a question through the index
/// at the service's search breadth; 2,000 random vectors of 1,536 dimensions took 6–9 ms. So the
/// budget is 2,000 chunks of 384 dimensions (500 of 1,536). The exact scan also misses nothing,
/// where a small tenant's few vectors in a big shared index are found only by scanning past other
/// tenants' neighbours.
const EXACT_SCAN_DIMENSIONS: usize = 2_000 * 384;

/// The most chunks of `dims` dimensions a tenant may have to be scanned exactly.
pub fn exact_scan_max_chunks(dims: usize) -> usize {
    EXACT_SCAN_DIMENSIONS / dims.max(1)
}

/// The hybrid statement ($1 query vector, $2 tenant, $3 candidates per list, $4 question text,
/// $5 and $6 the weights of the vector and the full-text list, $7 the similarity floor, $8 how
/// many to return): both candidate lists, fused by reciprocal rank fusion, in one statement; only
/// the winners' texts leave the database. The model and dimension are written into the SQL so
/// that the planner can match the partial HNSW index of this model (a bound parameter would not
/// prove the index's predicate).
///
/// The vector list has two arms, of which the tenant's size (its chunk count, kept with the
/// term frequencies) runs one: an exact scan or the HNSW index (see [`exact_scan_max_chunks`]). The
/// statement is planned once per connection for every tenant, so it must run in a transaction
/// opened by [`crate::db::for_retrieval`], whose planner settings make that one plan use the index
/// wherever an index can serve.
pub fn hybrid_sql(model: &str, dims: usize) -> String {
    hybrid_sql_in(model, dims, Arm::All)
}

/// Which of a tenant's documents one search covers. With a cross-language model (migration 0019,
/// `CROSS_LANGUAGE_MODEL`), a question is searched twice: by the configured model among the
/// documents on its side of the script line (Latin or not, what all-MiniLM-L6-v2 reads or not) and
/// among those that have no vectors of the cross-language model, and by the cross-language model
/// for the others — every document in exactly one of the two. The cross-language search ranks
/// every document that has its vectors and keeps, of its best, those on the other side: a passage
/// of the other side counts only where it beats the question's own side by that model too.
/// Searching the other side alone gave it half of every answer's places whatever it held, and
/// lost questions about documents in their own script in a tenant of several scripts (Russian
/// headings 0.944 → 0.860 recall@5, English FAQ 0.973 → 0.945). Measured on the shared corpus
/// (docs/BENCHMARKS.md, "Each passage by the model suited to its language pair").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm<'a> {
    /// every document, by its chunks' own model
    All,
    /// by the chunks' own model: every document but those of the other side with `cross` vectors
    Own { cross: &'a str, latin: bool },
    /// by the `cross` vectors in `chunk_vectors`: every document that has them ranked, the best
    /// of the other side kept
    Cross { cross: &'a str, latin: bool },
}

impl Arm<'_> {
    /// The condition on the documents (`d`) searched, the table of the vectors, and the condition
    /// on the documents of the best passages kept.
    fn sql(self) -> (String, &'static str, String) {
        let other_side = |latin: bool| format!("(d.script = 'latin') <> {latin}");
        match self {
            Arm::All => (String::new(), "chunks", String::new()),
            Arm::Own { cross, latin } => (
                format!("and not coalesce(d.cross_model = {} and {}, false)", literal(cross), other_side(latin)),
                "chunks",
                String::new(),
            ),
            Arm::Cross { cross, latin } => (
                format!("and d.cross_model = {}", literal(cross)),
                "chunk_vectors",
                format!("where {}", other_side(latin)),
            ),
        }
    }
}

/// [`hybrid_sql`] over one [`Arm`]'s documents.
pub fn hybrid_sql_in(model: &str, dims: usize, arm: Arm<'_>) -> String {
    let distance = format!("c.embedding::vector({dims}) <=> $1::vector({dims})");
    let (documents, vectors, kept) = arm.sql();
    format!(
        "{ctes},
         size as (
             select coalesce((select n.df from text_df n where n.tenant_id = $2 and n.term = ''), 0) as chunks
         ),
         by_vector as (
             select id, (1 - distance)::real as similarity from (
                 (select c.id, c.embedding <=> $1::vector as distance
                    from {vectors} c join documents d on d.tenant_id = c.tenant_id and d.id = c.document_id
                   where c.tenant_id = $2 and c.embedding_model = {model} and d.status <> 'failed' {documents}
                     and (select chunks from size) <= {exact_max}
                   order by distance limit $3)
                 union all
                 (select c.id, {distance} as distance
                    from {vectors} c join documents d on d.tenant_id = c.tenant_id and d.id = c.document_id
                   where c.tenant_id = $2 and c.embedding_model = {model} and d.status <> 'failed' {documents}
                     and (select chunks from size) > {exact_max}
                   order by {distance} limit $3)
             ) v
         ),
         -- the candidates checked best first until enough pass (most do), and the distance of
         -- those only
         by_text as (
             select t.id, t.rank, (1 - (t.embedding <=> $1::vector))::real as similarity from (
                 select r.id, r.rank, c.embedding
                   from (select id, rank from ranked order by rank desc, id) r
                   join {vectors} c on c.id = r.id
                   join documents d on d.tenant_id = c.tenant_id and d.id = c.document_id
                  where c.tenant_id = $2 and c.embedding_model = {model} and d.status <> 'failed' {documents}
                  order by r.rank desc, r.id limit $3
             ) t
         ),
         -- each list's rank counts every candidate, those under the floor too
         listed as (
             select id, similarity, $5::real / ({RRF_K} + row_number() over (order by similarity desc)) as part
               from by_vector
             union all
             select id, similarity, $6::real / ({RRF_K} + row_number() over (order by rank desc, id)) as part
               from by_text
         ),
         fused as (
             select id, max(similarity) as similarity, sum(part)::real as score
               from listed where similarity >= $7
              group by id
             -- a list weighed 0 adds no candidate of its own
             having sum(part) > 0
              order by score desc, similarity desc limit $8
         )
         {passages}",
        ctes = text_ctes("$2", "$3", "$4"),
        passages = passages(&kept),
        model = literal(model),
        exact_max = exact_scan_max_chunks(dims)
    )
}

/// The end of both search statements: the fused winners (`fused`: id, similarity, score) as the
/// rows of [`Row`], those of the documents `kept` selects, best first.
fn passages(kept: &str) -> String {
    format!(
        "select f.id, c.document_id, d.filename, c.page_from, c.page_to, c.text, c.token_count, f.similarity, f.score
           from fused f
           join chunks c on c.id = f.id
           join documents d on d.tenant_id = c.tenant_id and d.id = c.document_id
          {kept}
          order by f.score desc, f.similarity desc"
    )
}

/// [`hybrid_sql_in`] for a question the model cannot read ([`crate::embed::reads`]): the full-text
/// list alone, scored as the hybrid statement scores it with the vector list weighing 0 — but no
/// vector is read or compared, so the question needs none (the chat does not embed it by that
/// model). Its passages' similarity is 0: none was measured. $1 the tenant, $2 candidates, $3 the
/// question's text, $4 the full-text list's weight, $5 how many to return.
pub fn text_sql_in(model: &str, arm: Arm<'_>) -> String {
    let (documents, vectors, kept) = arm.sql();
    format!(
        "{ctes},
         by_text as (
             select r.id, r.rank
               from (select id, rank from ranked order by rank desc, id) r
               join {vectors} c on c.id = r.id
               join documents d on d.tenant_id = c.tenant_id and d.id = c.document_id
              where c.tenant_id = $1 and c.embedding_model = {model} and d.status <> 'failed' {documents}
              order by r.rank desc, r.id limit $2
         ),
         fused as (
             select id, 0::real as similarity, ($4::real / ({RRF_K} + row_number() over (order by rank desc, id)))::real as score
               from by_text
              where $4::real > 0
              order by score desc limit $5
         )
         {passages}",
        ctes = text_ctes("$1", "$2", "$3"),
        passages = passages(&kept),
        model = literal(model),
    )
}

/// The embedding models of each tenant's searchable chunks (`documents.embedding_model`, which
/// changes with a document's chunks in one transaction), kept a few seconds: a question is
/// embedded with the configured model always, and with these others while a model switch
/// re-embeds the tenant's documents. A stale entry can only name a model no document holds any
/// more (one search for nothing) — documents move to the configured model, which is always
/// searched. With them, the cross-language vectors the tenant's documents have, by side of the
/// script line: a question is embedded by the cross-language model only when documents of the
/// other side have its vectors (a tenant of one script pays nothing for it). A stale entry there
/// costs at most one search for nothing, or leaves a document just made ready to its own model's
/// search for a few seconds.
#[derive(Default)]
pub struct TenantModels {
    cache: std::sync::Mutex<std::collections::HashMap<Uuid, Models>>,
}

/// When a tenant's models were read, and which they were.
type Models = (std::time::Instant, std::sync::Arc<Searchable>);

/// What a tenant's searchable documents are embedded with.
#[derive(Debug, Default)]
pub struct Searchable {
    /// the models of their chunks
    pub models: Vec<String>,
    /// the cross-language models of their second vectors, with the side of the script line of
    /// their documents (`true`: Latin)
    pub cross: Vec<(String, bool)>,
}

impl Searchable {
    /// Whether documents on the other side of the script line than `latin` have `cross` vectors.
    pub fn crosses(&self, cross: &str, latin: bool) -> bool {
        self.cross.iter().any(|(m, side)| m == cross && *side != latin)
    }
}

impl TenantModels {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(5);
    /// Tenants kept, at most (the map is emptied beyond: one read each refills it).
    const MAX_TENANTS: usize = 100_000;

    pub async fn get(&self, db: &PgPool, tenant: Uuid) -> Result<std::sync::Arc<Searchable>, sqlx::Error> {
        if let Some((at, models)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&tenant)
            && at.elapsed() < Self::FRESH
        {
            return Ok(models.clone());
        }
        let mut tx = crate::db::for_tenant(db, tenant).await?;
        let rows: Vec<(String, Option<String>, Option<bool>)> = sqlx::query_as(
            "select distinct embedding_model, cross_model, script = 'latin' from documents
              where tenant_id = $1 and embedding_model is not null and status <> 'failed'",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut found = Searchable::default();
        for (model, cross, latin) in rows {
            if !found.models.contains(&model) {
                found.models.push(model);
            }
            if let Some(cross) = cross {
                let pair = (cross, latin.unwrap_or(true));
                if !found.cross.contains(&pair) {
                    found.cross.push(pair);
                }
            }
        }
        let models = std::sync::Arc::new(found);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= Self::MAX_TENANTS {
            cache.clear();
        }
        cache.insert(tenant, (std::time::Instant::now(), models.clone()));
        Ok(models)
    }
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

/// The full-text half alone: the chunk ids and BM25 scores that hybrid search hands to fusion
/// (best first, at most `n`), for the tests and benchmarks that measure that half by itself.
pub async fn text_candidates(
    db: impl sqlx::PgExecutor<'_>,
    tenant_id: Uuid,
    model: &str,
    query_text: &str,
    n: usize,
) -> Result<Vec<(i64, f32)>, sqlx::Error> {
    let sql = format!(
        "{ctes}
         select c.id, r.rank
           from ranked r
           join chunks c on c.id = r.id
           join documents d on d.tenant_id = c.tenant_id and d.id = c.document_id
          where c.tenant_id = $1 and c.embedding_model = {model} and d.status <> 'failed'
          order by r.rank desc, r.id limit $2",
        ctes = text_ctes("$1", "$2", "$3"),
        model = literal(model)
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(n as i64)
        .bind(text_query(query_text))
        .fetch_all(db)
        .await
}

/// Hybrid search: vector and full-text candidates in one statement (one round trip), fused.
/// The HNSW settings (search breadth, iterative scans) are session settings of the pool's
/// connections (see `db::pool_options`); run it in a transaction of [`crate::db::for_retrieval`].
pub async fn search(
    db: impl sqlx::PgExecutor<'_>,
    tenant_id: Uuid,
    space: Space<'_>,
    query_vector: &[f32],
    query_text: &str,
    params: &Params,
) -> Result<Vec<Source>, sqlx::Error> {
    search_in(db, tenant_id, space, Arm::All, Some(query_vector), query_text, params).await
}

/// One model's part of a question's search: the vectors searched, the question's vector by that
/// model, and the similarity floor.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    pub space: Space<'a>,
    /// `None` for a question the model cannot read (see [`search_in`]): it is not embedded by it
    pub vector: Option<&'a [f32]>,
    pub min_similarity: f32,
}

/// A question's search as the chat runs it, in a transaction of [`crate::db::for_retrieval`]:
/// by each `own` model over the documents its chunks hold (more than one while a model switch
/// re-embeds the tenant; their lists merged by score), and, with `cross` (the cross-language model,
/// when documents on the other side of the script line from the question, `latin` or not, have
/// its vectors), by that model over those documents, the two sides' lists taken in turns
/// ([`interleave`]). `params.min_similarity` is each query's own.
pub async fn search_question(
    conn: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    own: &[Query<'_>],
    cross: Option<Query<'_>>,
    latin: bool,
    question: &str,
    params: &Params,
) -> Result<Vec<Source>, sqlx::Error> {
    let own_arm = match &cross {
        Some(c) => Arm::Own { cross: c.space.model, latin },
        None => Arm::All,
    };
    let mut sources = Vec::new();
    for q in own {
        let params = Params { min_similarity: q.min_similarity, ..*params };
        sources.extend(search_in(&mut *conn, tenant_id, q.space, own_arm, q.vector, question, &params).await?);
    }
    if own.len() > 1 {
        // each model's documents are disjoint; their fused lists merge by score
        sources.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.similarity.total_cmp(&a.similarity)));
        sources.truncate(params.k);
    }
    if let Some(c) = cross {
        let arm = Arm::Cross { cross: c.space.model, latin };
        let params = Params { min_similarity: c.min_similarity, ..*params };
        let other = search_in(&mut *conn, tenant_id, c.space, arm, c.vector, question, &params).await?;
        sources = interleave(sources, other, params.k);
    }
    Ok(sources)
}

/// Two ranked lists of disjoint documents fused by reciprocal rank fusion with equal weights (so
/// taken in turns, the first list's first at equal rank), the first `k`: the passages of the
/// question's side and those of the other side, each ranked by the model suited to the pair of
/// languages. Each keeps the score of its own search.
pub fn interleave(own: Vec<Source>, other: Vec<Source>, k: usize) -> Vec<Source> {
    let mut out = Vec::with_capacity(k.min(own.len() + other.len()));
    let (mut own, mut other) = (own.into_iter(), other.into_iter());
    while out.len() < k {
        match (own.next(), other.next()) {
            (None, None) => break,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
    out.truncate(k);
    out
}

/// [`search`] over one [`Arm`]'s documents (`space` is the arm's model: the cross-language one
/// for [`Arm::Cross`]). Without a vector, or with one of a question the model cannot read, the
/// question is searched by its words alone ([`text_sql_in`]).
pub async fn search_in(
    db: impl sqlx::PgExecutor<'_>,
    tenant_id: Uuid,
    space: Space<'_>,
    arm: Arm<'_>,
    query_vector: Option<&[f32]>,
    query_text: &str,
    params: &Params,
) -> Result<Vec<Source>, sqlx::Error> {
    // a question the model cannot read (all-MiniLM-L6-v2 and a Persian question) is searched by
    // its words alone: its vector would only push noise into the fusion, and its similarity says
    // nothing, so no floor either (the full-text list holds only chunks that share its words)
    let rows: Vec<Row> = match query_vector.filter(|_| crate::embed::reads(space.model, query_text)) {
        Some(vector) => {
            sqlx::query_as(sqlx::AssertSqlSafe(hybrid_sql_in(space.model, space.dims, arm)))
                .bind(pgvector::Vector::from(vector.to_vec()))
                .bind(tenant_id)
                .bind(params.candidates as i64)
                .bind(text_query(query_text))
                .bind(params.vector_weight)
                .bind(params.text_weight)
                .bind(params.min_similarity)
                .bind(params.k as i64)
                .fetch_all(db)
                .await?
        }
        None => {
            sqlx::query_as(sqlx::AssertSqlSafe(text_sql_in(space.model, arm)))
                .bind(tenant_id)
                .bind(params.candidates as i64)
                .bind(text_query(query_text))
                .bind(params.text_weight)
                .bind(params.k as i64)
                .fetch_all(db)
                .await?
        }
    };
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
