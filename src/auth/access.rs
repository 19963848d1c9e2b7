//! Open chat sockets learn at once that their user's access changed. Every removal, change of
//! role and revocation notifies `docuchat_access` with the user's id (a trigger, migration 0009);
//! each process listens and wakes that user's sockets, which check their token again and close if
//! it is no longer good. While the listener is not connected, every socket checks again each time
//! it reconnects, so nothing is missed for longer than a reconnection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Once},
};

use sqlx::PgPool;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::db::{self, Listening};

const CHANNEL: &str = "docuchat_access";
const ACCESS_CHANGES: &str = "access changes; open sockets are checked when it reconnects";

pub struct AccessWatch {
    db: PgPool,
    users: Mutex<HashMap<Uuid, broadcast::Sender<()>>>,
    /// wakes every socket (the listener reconnected: a change may have been missed)
    everyone: broadcast::Sender<()>,
    listener: Once,
}

/// One socket's subscription; dropping it forgets the user when no other socket of theirs is open.
pub struct Watch {
    user: Uuid,
    mine: broadcast::Receiver<()>,
    everyone: broadcast::Receiver<()>,
    owner: Arc<AccessWatch>,
}

impl Watch {
    /// Resolves when the user's access may have changed.
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = self.mine.recv() => {}
            _ = self.everyone.recv() => {}
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut users = self.owner.users.lock().unwrap_or_else(|e| e.into_inner());
        // this receiver still counts until it is dropped, after this
        if users.get(&self.user).is_some_and(|tx| tx.receiver_count() <= 1) {
            users.remove(&self.user);
        }
    }
}

impl AccessWatch {
    pub fn new(db: PgPool) -> Arc<Self> {
        let (everyone, _) = broadcast::channel(4);
        Arc::new(Self { db, users: Mutex::default(), everyone, listener: Once::new() })
    }

    /// Subscribes a socket of `user`.
    pub fn watch(self: &Arc<Self>, user: Uuid) -> Watch {
        self.listener.call_once(|| {
            tokio::spawn(db::listen(
                Arc::downgrade(self),
                |w| w.db.clone(),
                CHANNEL,
                ACCESS_CHANGES,
                |w, event| {
                    match event {
                        // whatever happened while not listening: every socket checks again
                        Listening::Live => {
                            let _ = w.everyone.send(());
                        }
                        Listening::Notified(payload) => {
                            if let Ok(user) = Uuid::try_parse(payload) {
                                w.wake(user);
                            }
                        }
                        Listening::Lost => {}
                    }
                },
            ));
        });
        let mine = {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            users.entry(user).or_insert_with(|| broadcast::channel(4).0).subscribe()
        };
        Watch { user, mine, everyone: self.everyone.subscribe(), owner: self.clone() }
    }

    fn wake(&self, user: Uuid) {
        if let Some(tx) = self.users.lock().unwrap_or_else(|e| e.into_inner()).get(&user) {
            let _ = tx.send(());
        }
    }
}
