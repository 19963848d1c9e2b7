//! Retrieval quality per language and across languages, for each local embedding model and each
//! retriever (dense only, full text only, the hybrid the service runs).
//!
//!     eval "$(infra/dev.sh env)"
//!     cargo run --release --example eval_retrieval -- <directory of PDFs> [evaluation sets directory] [models]
//!
//! e.g. `../shared/data/pdfs docs/eval`. Every PDF the service can read is extracted, chunked and
//! embedded as ingestion would, with each model in turn (`all-MiniLM-L6-v2,multilingual-e5-small`
//! by default). Each question is asked twice: of a tenant holding the whole corpus (`corpus`: the
//! other documents compete, some in the question's language) and of a tenant holding its
//! document alone (`alone`). The sets (`*.jsonl`, see `docs/eval/`) name a document, a question and the
//! answer's pages; a retrieved chunk is a hit when it is of that document and its pages meet the
//! answer's. Printed per set: recall@5 (a hit among the first five) and MRR@10 (1/rank of the first
//! hit in ten), and the similarity of the best dense hit for answered and for unanswerable
//! questions (the questions of another set, asked of a tenant without their document) — what the
//! similarity floor (`RETRIEVAL_MIN_SIMILARITY`) is set from. `EVAL_WEIGHTS=vector,text` sets the
//! hybrid's fusion weights (default: the service's).

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;

use docuchat::{
    config::Config,
    db,
    embed::{
        Embedder,
        local::{LocalEmbedder, LocalModel},
    },
    retrieval::{self, Params, Space},
};
use sqlx::postgres::PgPoolOptions;
use support::{Question, percentile};
use uuid::Uuid;

struct Set {
    name: String,
    questions: Vec<Question>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    docuchat::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(!args.is_empty(), "usage: eval_retrieval <directory of PDFs> [sets directory] [models]");
    let pdfs = args[0].clone();
    let sets_dir = args.get(1).cloned().unwrap_or_else(|| format!("{}/docs/eval", env!("CARGO_MANIFEST_DIR")));
    let models: Vec<LocalModel> = args
        .get(2)
        .map_or("all-MiniLM-L6-v2,multilingual-e5-small", String::as_str)
        .split(',')
        .map(|m| LocalModel::from_name(m).ok_or_else(|| anyhow::anyhow!("no local model {m}")))
        .collect::<anyhow::Result<_>>()?;
    let mut names: Vec<_> = std::fs::read_dir(&sets_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    names.sort();
    let sets: Vec<Set> = names
        .iter()
        .map(|p| {
            Ok(Set {
                name: p.file_stem().unwrap().to_string_lossy().into_owned(),
                questions: support::read_questions(&p.to_string_lossy())?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    support::with_scratch_database(|url| async move { run(&url, &pdfs, &sets, &models).await }).await
}

async fn run(url: &str, pdfs: &str, sets: &[Set], models: &[LocalModel]) -> anyhow::Result<()> {
    let owner = PgPoolOptions::new().max_connections(4).connect(url).await?;
    db::migrate(&owner).await?;
    let config = Config::from_env()?;
    let service = db::pool_options(config.chat.ef_search).max_connections(4).connect(url).await?;
    let root = std::path::PathBuf::from(
        config.local_model_dir.clone().ok_or_else(|| anyhow::anyhow!("set LOCAL_MODEL_DIR (infra/dev.sh env)"))?,
    );
    // `EVAL_WEIGHTS=vector,text`: the hybrid's fusion weights (the service's by default)
    let (vector_weight, text_weight) = match std::env::var("EVAL_WEIGHTS") {
        Ok(w) => {
            let (v, t) = w.split_once(',').ok_or_else(|| anyhow::anyhow!("EVAL_WEIGHTS=vector,text"))?;
            (v.parse()?, t.parse()?)
        }
        Err(_) => (Params::default().vector_weight, Params::default().text_weight),
    };
    println!("hybrid fusion weights: vector {vector_weight}, text {text_weight}");
    let mut table = Vec::new();
    // every question's ranked lists by each model, and where every chunk is, for the two-model
    // fusions measured after the models alone
    let mut lists: HashMap<(usize, &str, usize, &str), Lists> = HashMap::new();
    let mut places: HashMap<i64, (String, i32, i32)> = HashMap::new();
    // whether each chunk is in the script the first model reads (for the `by script` fusion)
    let mut readable: HashMap<i64, bool> = HashMap::new();
    // MiniLM's tenants and question vectors, for the service's search by script once e5 is loaded
    let mut minilm: Option<MiniLmTenants> = None;
    for &model in models {
        let embedder = LocalEmbedder::load_model(model, &model.dir_in(&root), docuchat::embed::bert::best_kernel(), 2)?;
        println!("{}:", model.name());
        let docs = support::read_pdfs(pdfs, &config, &embedder).await?;
        let space = Space { model: model.name(), dims: embedder.dimensions() };
        // the corpus in one tenant, and each evaluated document alone in one of its own
        let slug = |what: &str| format!("eval-{}-{what}", model.name().to_lowercase()).replace('.', "-");
        let corpus = support::tenant_with_documents(
            &owner,
            &service,
            &slug("corpus"),
            &docs.iter().collect::<Vec<_>>(),
            space.model,
        )
        .await?;
        let mut alone: HashMap<String, Uuid> = HashMap::new();
        for set in sets {
            let doc = &set.questions[0].doc;
            if !alone.contains_key(doc) {
                let members: Vec<&support::Document> = docs.iter().filter(|d| d.filename == *doc).collect();
                alone.insert(
                    doc.clone(),
                    support::tenant_with_documents(&owner, &service, &slug(doc), &members, space.model).await?,
                );
            }
        }
        sqlx::query("vacuum analyze").execute(&owner).await?;
        // where this model's chunks are, and in which script: a document is in the script of most
        // of its chunks (a Russian manual's chunks of commands and code are still the Russian
        // manual's)
        let chunks: Vec<(i64, String, i32, i32, Uuid, String)> = sqlx::query_as(
            "select c.id, d.filename, c.page_from, c.page_to, c.document_id, c.text
               from chunks c join documents d on d.id = c.document_id where c.embedding_model = $1",
        )
        .bind(space.model)
        .fetch_all(&owner)
        .await?;
        places.extend(chunks.iter().map(|(id, f, a, b, _, _)| (*id, (f.clone(), *a, *b))));
        let mut by_document: HashMap<Uuid, (usize, usize)> = HashMap::new();
        for (_, _, _, _, document, text) in &chunks {
            let tally = by_document.entry(*document).or_default();
            tally.0 += usize::from(docuchat::embed::reads(models[0].name(), text));
            tally.1 += 1;
        }
        readable.extend(chunks.iter().map(|(id, _, _, _, document, _)| {
            let (read, all) = by_document[document];
            (*id, read * 2 > all)
        }));

        // the best dense hit's similarity of each question asked across the script line (not in
        // Latin script, its answer in a Latin-script document), asked of its document alone
        let mut across_hits = Vec::new();
        let mut set_vectors = Vec::new();
        for (set_index, set) in sets.iter().enumerate() {
            let texts: Vec<String> = set.questions.iter().map(|q| q.text.clone()).collect();
            let vectors = support::embed_questions(&embedder, &texts).await?;
            set_vectors.push(vectors.clone());
            for (scope, tenant) in [("corpus", corpus), ("alone", alone[&set.questions[0].doc])] {
                let mut scores: HashMap<&str, Score> = HashMap::new();
                let mut best_hit = Vec::new();
                for (qi, (q, v)) in set.questions.iter().zip(&vectors).enumerate() {
                    let candidates = Params::default().candidates;
                    let dense =
                        retrieval::nearest(&service, tenant, space, v, candidates, config.chat.ef_search, false)
                            .await?;
                    let mut tx = db::for_tenant(&service, tenant).await?;
                    let text = retrieval::text_candidates(&mut *tx, tenant, space.model, &q.text, candidates).await?;
                    tx.commit().await?;
                    let mut tx = db::for_retrieval(&service, tenant).await?;
                    let params =
                        Params { k: 10, min_similarity: -1.0, vector_weight, text_weight, ..Params::default() };
                    let hybrid: Vec<i64> = retrieval::search(&mut *tx, tenant, space, v, &q.text, &params)
                        .await?
                        .into_iter()
                        .map(|s| s.chunk_id)
                        .collect();
                    tx.commit().await?;
                    if let Some((id, similarity)) = dense.iter().take(10).find(|(id, _)| hit(&places, q, *id)) {
                        best_hit.push(f64::from(*similarity));
                        if scope == "alone"
                            && readable[id]
                            && !docuchat::embed::reads(LocalModel::MiniLm.name(), &q.text)
                        {
                            across_hits.push(f64::from(*similarity));
                        }
                    }
                    let found = Lists {
                        dense: dense.iter().map(|d| d.0).collect(),
                        text: text.iter().map(|d| d.0).collect(),
                        hybrid,
                    };
                    for (retriever, ids) in
                        [("dense", &found.dense), ("full text", &found.text), ("hybrid", &found.hybrid)]
                    {
                        scores.entry(retriever).or_default().add(ids, |id| hit(&places, q, id));
                    }
                    lists.insert((set_index, scope, qi, model.name()), found);
                }
                best_hit.sort_by(f64::total_cmp);
                let sim = if best_hit.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.2}/{:.2}", percentile(&best_hit, 0.1), percentile(&best_hit, 0.5))
                };
                for retriever in ["dense", "full text", "hybrid"] {
                    let similarity = if retriever == "dense" { sim.as_str() } else { "" };
                    table.push(scores[retriever].row(set, scope, model.name(), retriever, similarity));
                }
            }
        }
        // unanswerable: every set's questions asked of a tenant without their document
        let mut unanswered = Vec::new();
        let others: Vec<&Question> = sets.iter().flat_map(|s| &s.questions).collect();
        let empty = Uuid::now_v7();
        sqlx::query("insert into tenants (id, name, slug, admin_email) values ($1, $2, $2, 'admin@eval.example')")
            .bind(empty)
            .bind(format!("eval-{}-unrelated", model.name().to_lowercase()))
            .execute(&owner)
            .await?;
        let unrelated: Vec<&support::Document> = docs
            .iter()
            .filter(|d| ["sf424-form.pdf", "paper-bdb-usenix.pdf", "crazyones.pdf"].contains(&d.filename.as_str()))
            .collect();
        support::store_documents(&owner, &service, empty, &unrelated, space.model).await?;
        let texts: Vec<String> = others.iter().map(|q| q.text.clone()).collect();
        // the three documents are in Latin script: a question in another script is unanswerable
        // across the script line (what the cross-language search's floor must turn away)
        let mut across = Vec::new();
        for (v, text) in support::embed_questions(&embedder, &texts).await?.iter().zip(&texts) {
            if let Some((_, s)) =
                retrieval::nearest(&service, empty, space, v, 1, config.chat.ef_search, false).await?.first()
            {
                unanswered.push(f64::from(*s));
                if !docuchat::embed::reads(LocalModel::MiniLm.name(), text) {
                    across.push(f64::from(*s));
                }
            }
        }
        for list in [&mut unanswered, &mut across] {
            list.sort_by(f64::total_cmp);
        }
        println!(
            "  best similarity of unanswerable questions (sf424 form, bdb paper, crazyones): p50 {:.2}, p90 {:.2}, p99 {:.2}",
            percentile(&unanswered, 0.5),
            percentile(&unanswered, 0.9),
            percentile(&unanswered, 0.99)
        );
        println!(
            "  of those, the {} not in Latin script (across the script line): p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
            across.len(),
            percentile(&across, 0.5),
            percentile(&across, 0.9),
            percentile(&across, 0.99),
            across.last().copied().unwrap_or(f64::NAN)
        );
        // what a floor on this model's similarity does across the script line (for a model that
        // reads other scripts: MiniLM's similarities there say nothing)
        if model != LocalModel::MiniLm {
            floor_sweep("this model's own chunks", &across_hits, &across);
        }
        if model == LocalModel::MiniLm {
            minilm = Some(MiniLmTenants { corpus, alone: alone.clone(), unrelated: empty, vectors: set_vectors });
        } else if let Some(minilm) = &minilm {
            let e5 = (embedder.model(), set_vectors);
            service_by_script(
                &owner,
                &service,
                sets,
                minilm,
                &embedder,
                e5,
                &places_of_minilm(&owner).await?,
                &mut table,
            )
            .await?;
        }
    }
    if models.len() == 2 {
        two_models(sets, models, &lists, &places, &readable, &mut table);
    }
    println!(
        "\n{:<22} {:>4} {:<7} {:<22} {:<10} {:>8} {:>7} {:>11}",
        "set", "n", "tenant", "model", "retriever", "recall@5", "MRR@10", "hit sim p10/p50"
    );
    for line in table {
        println!("{line}");
    }
    Ok(())
}

/// What a floor on a similarity does across the script line: the share of answered questions whose
/// answering passage it keeps, and of unanswerable ones whose best passage it lets by.
fn floor_sweep(what: &str, answered: &[f64], unanswerable: &[f64]) {
    if answered.is_empty() || unanswerable.is_empty() {
        return;
    }
    let share = |list: &[f64], floor: f64| list.iter().filter(|s| **s >= floor).count() as f64 / list.len() as f64;
    let floors: Vec<String> = (0..=20)
        .map(|i| 0.70 + 0.01 * f64::from(i))
        .map(|f| format!("{f:.2}: {:.2}/{:.2}", share(answered, f), share(unanswerable, f)))
        .collect();
    println!(
        "  floors across the script line, {what} ({} answered, {} unanswerable), answering passage kept / unanswerable passed:",
        answered.len(),
        unanswerable.len()
    );
    for row in floors.chunks(7) {
        println!("    {}", row.join("  "));
    }
}

/// MiniLM's tenants (the corpus, each evaluated document alone, the unrelated documents) and its
/// vectors of each set's questions.
struct MiniLmTenants {
    corpus: Uuid,
    alone: HashMap<String, Uuid>,
    unrelated: Uuid,
    vectors: Vec<Vec<Vec<f32>>>,
}

/// Where MiniLM's chunks are (file, pages), by id.
async fn places_of_minilm(owner: &sqlx::PgPool) -> anyhow::Result<HashMap<i64, (String, i32, i32)>> {
    let rows: Vec<(i64, String, i32, i32)> = sqlx::query_as(
        "select c.id, d.filename, c.page_from, c.page_to from chunks c join documents d on d.id = c.document_id
          where c.embedding_model = $1",
    )
    .bind(LocalModel::MiniLm.name())
    .fetch_all(owner)
    .await?;
    Ok(rows.into_iter().map(|(id, f, a, b)| (id, (f, a, b))).collect())
}

/// The service as built (`CROSS_LANGUAGE_MODEL`): MiniLM's tenants given e5 vectors of their own
/// chunks, as the `cross_vectors` job writes them, and each question searched by
/// `retrieval::search_question` — MiniLM over its side of the script line, e5 over the other,
/// the lists taken in turns — with no similarity floor; then what a floor on the e5 side does.
#[allow(clippy::too_many_arguments)]
async fn service_by_script(
    owner: &sqlx::PgPool,
    service: &sqlx::PgPool,
    sets: &[Set],
    minilm: &MiniLmTenants,
    e5: &LocalEmbedder,
    (e5_model, e5_vectors): (&str, Vec<Vec<Vec<f32>>>),
    places: &HashMap<i64, (String, i32, i32)>,
    table: &mut Vec<String>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut tenants: Vec<Uuid> = vec![minilm.corpus, minilm.unrelated];
    tenants.extend(minilm.alone.values().copied());
    let mut n = 0;
    for tenant in &tenants {
        n += support::add_cross_vectors(owner, service, *tenant, e5).await?;
    }
    sqlx::query("vacuum analyze").execute(owner).await?;
    println!(
        "MiniLM's chunks given e5 vectors, as the service does: {n} chunks in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let models = retrieval::TenantModels::default();
    let minilm_space = Space { model: LocalModel::MiniLm.name(), dims: 384 };
    let e5_space = Space { model: e5_model, dims: 384 };
    let params = &Params { k: 10, ..Params::default() };
    let search = |tenant: Uuid, question: &str, own: Vec<f32>, cross: Vec<f32>| {
        let models = &models;
        let question = question.to_owned();
        async move {
            let latin = docuchat::embed::script(&question) == "latin";
            let crosses = models.get(service, tenant).await?.crosses(e5_model, latin);
            let own = [retrieval::Query { space: minilm_space, vector: Some(&own), min_similarity: -1.0 }];
            let cross =
                crosses.then_some(retrieval::Query { space: e5_space, vector: Some(&cross), min_similarity: -1.0 });
            let mut tx = db::for_retrieval(service, tenant).await?;
            let found = retrieval::search_question(&mut tx, tenant, &own, cross, latin, &question, params).await?;
            tx.commit().await?;
            Ok::<_, anyhow::Error>((found, crosses))
        }
    };
    let mut across_hits = Vec::new();
    for (set_index, set) in sets.iter().enumerate() {
        for (scope, tenant) in [("corpus", minilm.corpus), ("alone", minilm.alone[&set.questions[0].doc])] {
            let mut score = Score::default();
            for (qi, q) in set.questions.iter().enumerate() {
                let (found, crossed) =
                    search(tenant, &q.text, minilm.vectors[set_index][qi].clone(), e5_vectors[set_index][qi].clone())
                        .await?;
                let ids: Vec<i64> = found.iter().map(|s| s.chunk_id).collect();
                score.add(&ids, |id| hit(places, q, id));
                // across the line: a question not in Latin script, its document searched by e5
                if scope == "alone"
                    && crossed
                    && docuchat::embed::script(&q.text) != "latin"
                    && let Some(s) = found.iter().find(|s| hit(places, q, s.chunk_id))
                {
                    across_hits.push(f64::from(s.similarity));
                }
            }
            table.push(score.row(set, scope, "MiniLM+e5 (service)", "by script", ""));
        }
    }
    // unanswerable across the line: every question not in Latin script, asked of the unrelated
    // (Latin-script) documents; its best passage
    let mut unanswerable = Vec::new();
    for (set_index, set) in sets.iter().enumerate() {
        for (qi, q) in set.questions.iter().enumerate() {
            if docuchat::embed::script(&q.text) == "latin" {
                continue;
            }
            let (found, _) = search(
                minilm.unrelated,
                &q.text,
                minilm.vectors[set_index][qi].clone(),
                e5_vectors[set_index][qi].clone(),
            )
            .await?;
            if let Some(best) = found.iter().map(|s| s.similarity).max_by(f32::total_cmp) {
                unanswerable.push(f64::from(best));
            }
        }
    }
    floor_sweep("the service's chunks (MiniLM's cut) by e5", &across_hits, &unanswerable);
    Ok(())
}

/// Whether chunk `id` answers `q`: of its document, its pages meeting the answer's.
fn hit(places: &HashMap<i64, (String, i32, i32)>, q: &Question, id: i64) -> bool {
    places.get(&id).is_some_and(|(f, a, b)| *f == q.doc && *a <= q.pages.1 && *b >= q.pages.0)
}

/// One retriever's tally over a set's questions: hits in the first five, and the sum of 1/rank of
/// the first hit in ten.
#[derive(Clone, Copy, Default)]
struct Score {
    in_five: f64,
    reciprocal_ranks: f64,
}

impl Score {
    fn add(&mut self, ranked: &[i64], hit: impl Fn(i64) -> bool) {
        let first = ranked.iter().take(10).position(|&id| hit(id));
        if first.is_some_and(|r| r < 5) {
            self.in_five += 1.0;
        }
        self.reciprocal_ranks += first.map_or(0.0, |r| 1.0 / (r as f64 + 1.0));
    }

    /// A line of the table: recall@5 and MRR@10 over the set's questions.
    fn row(&self, set: &Set, scope: &str, model: &str, retriever: &str, similarity: &str) -> String {
        let n = set.questions.len() as f64;
        format!(
            "{:<22} {:>4} {:<7} {:<22} {:<10} {:>8.3} {:>7.3} {:>11}",
            set.name,
            set.questions.len(),
            scope,
            model,
            retriever,
            self.in_five / n,
            self.reciprocal_ranks / n,
            similarity
        )
    }
}

/// One question's ranked chunk ids by one model: the dense and full-text candidate lists (as many
/// as the hybrid fuses) and the hybrid's result.
struct Lists {
    dense: Vec<i64>,
    text: Vec<i64>,
    hybrid: Vec<i64>,
}

/// Reciprocal rank fusion of weighted lists, as the hybrid statement fuses (k = 60).
fn fuse(parts: &[(&[i64], f64)]) -> Vec<i64> {
    let mut score: HashMap<i64, f64> = HashMap::new();
    for (list, weight) in parts {
        for (rank, id) in list.iter().enumerate() {
            *score.entry(*id).or_default() += weight / (60.0 + rank as f64 + 1.0);
        }
    }
    let mut fused: Vec<(i64, f64)> = score.into_iter().filter(|(_, s)| *s > 0.0).collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused.into_iter().map(|(id, _)| id).collect()
}

/// What a deployment holding every document in both models could answer: each model's chunks
/// are their own (cut at each model's size), so the fused lists mix chunks of both cuts, as two
/// chunk sets of one tenant would. `route`: a question the first model reads (English, Latin
/// script) gets its hybrid, any other the second's. `3 lists`: the first model's dense list (when
/// it reads the question), the second's, and the first's full-text list, weighed alike.
/// `2 hybrids`: the two models' hybrid results fused. `by script`: the first model's hybrid
/// among the chunks of documents written in the question's script (the first model's script or
/// not: for a question it cannot read, its words alone), the second's among the others, fused —
/// each passage ranked by the model suited to the pair of languages.
fn two_models(
    sets: &[Set],
    models: &[LocalModel],
    lists: &HashMap<(usize, &str, usize, &str), Lists>,
    places: &HashMap<i64, (String, i32, i32)>,
    readable: &HashMap<i64, bool>,
    table: &mut Vec<String>,
) {
    let (a, b) = (models[0].name(), models[1].name());
    for (set_index, set) in sets.iter().enumerate() {
        for scope in ["corpus", "alone"] {
            let mut scores: HashMap<&str, Score> = HashMap::new();
            for (qi, q) in set.questions.iter().enumerate() {
                let (Some(la), Some(lb)) =
                    (lists.get(&(set_index, scope, qi, a)), lists.get(&(set_index, scope, qi, b)))
                else {
                    continue;
                };
                let reads = docuchat::embed::reads(a, &q.text);
                let first_weight = if reads { 1.0 } else { 0.0 };
                let route = if reads { la.hybrid.clone() } else { lb.hybrid.clone() };
                let three = fuse(&[(&la.dense, first_weight), (&lb.dense, 1.0), (&la.text, 1.0)]);
                let hybrids = fuse(&[(&la.hybrid, first_weight), (&lb.hybrid, 1.0)]);
                let same_script = |id: &&i64| readable.get(*id).copied().unwrap_or(false) == reads;
                let own: Vec<i64> = la.hybrid.iter().filter(same_script).copied().collect();
                let other: Vec<i64> = lb.hybrid.iter().filter(|id| !same_script(id)).copied().collect();
                let by_script = fuse(&[(&own, 1.0), (&other, 1.0)]);
                for (name, ids) in
                    [("route", route), ("3 lists", three), ("2 hybrids", hybrids), ("by script", by_script)]
                {
                    scores.entry(name).or_default().add(&ids, |id| hit(places, q, id));
                }
            }
            for name in ["route", "3 lists", "2 hybrids", "by script"] {
                table.push(scores.get(name).copied().unwrap_or_default().row(set, scope, "both", name, ""));
            }
        }
    }
}
