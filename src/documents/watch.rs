//! Followers of a document's progress learn of each change without asking for it: every change of
//! status or progress notifies `docuchat_document` (a trigger, migration 0014); each process
//! listens once and passes the document's id to its open event streams, which read the document
//! again. While the listener is not connected the streams read their document every few seconds
//! instead, so a follower sees every stage late at worst, never not at all.

use std::sync::{
    Arc, Once,
    atomic::{AtomicBool, Ordering},
};

use sqlx::PgPool;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::db::{self, Listening};

const CHANNEL: &str = "docuchat_document";

/// What a stream hears: a document that changed, or `None` — anything may have (the listener
/// connected again after missing notifications).
pub type Notice = Option<Uuid>;

pub struct DocumentWatch {
    db: PgPool,
    notices: broadcast::Sender<Notice>,
    listener: Once,
    live: AtomicBool,
}

impl DocumentWatch {
    pub fn new(db: PgPool) -> Arc<Self> {
        // a stream that falls this far behind reads its document again (`Lagged`)
        let (notices, _) = broadcast::channel(1024);
        Arc::new(Self { db, notices, listener: Once::new(), live: AtomicBool::new(false) })
    }

    /// Subscribes a stream.
    pub fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<Notice> {
        self.listen();
        self.notices.subscribe()
    }

    /// Whether notifications arrive now (otherwise streams read their document on a timer).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    fn listen(self: &Arc<Self>) {
        self.listener.call_once(|| {
            tokio::spawn(db::listen(
                Arc::downgrade(self),
                |w| w.db.clone(),
                CHANNEL,
                "document progress; event streams read their documents on a timer meanwhile",
                |w, event| match event {
                    Listening::Live => {
                        w.live.store(true, Ordering::Release);
                        let _ = w.notices.send(None);
                    }
                    Listening::Notified(payload) => {
                        let id = payload.split_once(':').and_then(|(_, id)| Uuid::try_parse(id).ok());
                        if let Some(id) = id {
                            let _ = w.notices.send(Some(id));
                        }
                    }
                    Listening::Lost => w.live.store(false, Ordering::Release),
                },
            ));
        });
    }
}
