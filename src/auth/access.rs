//! Open chat sockets learn at once that their user's access changed. Every removal, change of
//! role and revocation notifies `docuchat_access` with the user's id (a trigger, migration 0009);
//! each process listens and wakes that user's sockets, which check their token again and close if
//! it is no longer good. While the listener is not connected, every socket checks again each time
//! it reconnects, so nothing is missed for longer than a reconnection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Once, Weak},
    time::Duration,
};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::broadcast;
use uuid::Uuid;

const CHANNEL: &str = "docuchat_access";

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
            tokio::spawn(listen(Arc::downgrade(self)));
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

async fn listen(watch: Weak<AccessWatch>) {
    loop {
        let Some(db) = watch.upgrade().map(|w| w.db.clone()) else { return };
        let listener = async {
            let mut l = PgListener::connect_with(&db).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(mut l) => {
                // whatever happened while not listening: every socket checks again
                match watch.upgrade() {
                    Some(w) => {
                        let _ = w.everyone.send(());
                    }
                    None => return,
                }
                while let Ok(Some(n)) = l.try_recv().await {
                    let Some(w) = watch.upgrade() else { return };
                    if let Ok(user) = Uuid::try_parse(n.payload()) {
                        w.wake(user);
                    }
                }
            }
            Err(e) => {
                if db.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "cannot listen for access changes; open sockets are checked when it reconnects");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
