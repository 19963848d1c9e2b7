//! Open chat sockets learn at once that their user's access changed. Every removal, change of
//! role and revocation notifies `docuchat_access` with the user's id (a trigger, migration 0009);
//! each process listens and wakes that user's sockets, which check their token again and close if
//! it is no longer good. While the listener is not connected, every socket checks again each time
//! it reconnects, so nothing is missed for longer than a reconnection.
//!
//! The same notifications keep a cache of the tokens checked lately, so that a request whose
//! token was found good a moment ago skips the database: an entry goes when its user's access
//! changes (in this process at once, in others when the notification arrives — milliseconds), and
//! after a minute in any case. Nothing is cached while the listener is not connected.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Once,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{api_keys::KeyCaller, users::User};
use crate::db::{self, Listening};

/// How long a checked token is believed without asking again, at most.
const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Tokens remembered at most (the cache is emptied when full).
const TOKENS_MAX: usize = 100_000;

const CHANNEL: &str = "docuchat_access";
const ACCESS_CHANGES: &str = "access changes; open sockets are checked when it reconnects";

pub struct AccessWatch {
    db: PgPool,
    users: Mutex<HashMap<Uuid, broadcast::Sender<()>>>,
    /// wakes every socket (the listener reconnected: a change may have been missed)
    everyone: broadcast::Sender<()>,
    listener: Once,
    /// tokens found good lately, by token id
    tokens: Mutex<HashMap<Uuid, (User, Instant)>>,
    /// live API keys found lately, by the SHA-256 of the secret
    keys: Mutex<HashMap<[u8; 32], KnownKey>>,
    /// listening now: only then is anything cached
    live: AtomicBool,
    /// moves with every notification: a check that raced one is not cached
    generation: AtomicU64,
}

/// A live key as remembered: (tenant, key, found at, last stamped as used at).
type KnownKey = (Uuid, KeyCaller, Instant, Instant);

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
        Arc::new(Self {
            db,
            users: Mutex::default(),
            everyone,
            listener: Once::new(),
            tokens: Mutex::default(),
            keys: Mutex::default(),
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        })
    }

    /// The user of a token found good within the last minute, unless their access changed since.
    pub fn cached_token(self: &Arc<Self>, jti: Uuid, tenant: Uuid) -> Option<User> {
        self.listen();
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(&jti).filter(|(u, at)| u.tenant_id == tenant && at.elapsed() < TOKEN_TTL).map(|(u, _)| u.clone())
    }

    /// The generation to hand to [`Self::remember_token`], read before the database is asked.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers a token found good, if no access changed since `generation` was read.
    pub fn remember_token(&self, jti: Uuid, user: User, generation: u64) {
        self.remember(&self.tokens, jti, (user, Instant::now()), generation);
    }

    /// Puts an entry into one of the caches, unless the listener is down or an access changed
    /// since `generation` was read; a full cache is emptied first.
    fn remember<K: Eq + std::hash::Hash, V>(&self, cache: &Mutex<HashMap<K, V>>, key: K, value: V, generation: u64) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if cache.len() >= TOKENS_MAX {
            cache.clear();
        }
        cache.insert(key, value);
    }

    /// Forgets what is cached of a user's tokens (their access changed), and wakes their sockets.
    pub fn changed(&self, user: Uuid) {
        {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            self.generation.fetch_add(1, Ordering::AcqRel);
            tokens.retain(|_, (u, _)| u.id != user);
        }
        self.wake(user);
    }

    fn forget_all(&self) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        tokens.clear();
        keys.clear();
    }

    /// The live key with this secret hash, found within the last minute and not revoked since;
    /// with whether its last-used stamp is due (at most once a minute).
    pub fn cached_key(self: &Arc<Self>, hash: &[u8; 32], tenant: Uuid) -> Option<(KeyCaller, bool)> {
        self.listen();
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let (key_tenant, key, found, stamped) = keys.get_mut(hash)?;
        if *key_tenant != tenant || found.elapsed() >= TOKEN_TTL {
            return None;
        }
        let due = stamped.elapsed() >= Duration::from_secs(60);
        if due {
            *stamped = Instant::now();
        }
        Some((key.clone(), due))
    }

    /// Remembers a live key, if no access changed since `generation` was read.
    pub fn remember_key(&self, hash: [u8; 32], tenant: Uuid, key: KeyCaller, generation: u64) {
        let now = Instant::now();
        self.remember(&self.keys, hash, (tenant, key, now, now), generation);
    }

    /// Forgets a key (revoked or deleted).
    pub fn key_changed(&self, id: Uuid) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        keys.retain(|_, (_, k, ..)| k.id != id);
    }

    fn listen(self: &Arc<Self>) {
        self.listener.call_once(|| {
            tokio::spawn(db::listen(
                Arc::downgrade(self),
                |w| w.db.clone(),
                CHANNEL,
                ACCESS_CHANGES,
                |w, event| {
                    match event {
                        // whatever happened while not listening: every socket checks again, and
                        // every cached token is asked for again
                        Listening::Live => {
                            w.forget_all();
                            w.live.store(true, Ordering::Release);
                            let _ = w.everyone.send(());
                        }
                        Listening::Notified(payload) => {
                            if let Some(key) = payload.strip_prefix("key:") {
                                if let Ok(id) = Uuid::try_parse(key) {
                                    w.key_changed(id);
                                }
                            } else if let Ok(user) = Uuid::try_parse(payload) {
                                w.changed(user);
                            }
                        }
                        Listening::Lost => {
                            w.live.store(false, Ordering::Release);
                            w.forget_all();
                        }
                    }
                },
            ));
        });
    }

    /// Subscribes a socket of `user`.
    pub fn watch(self: &Arc<Self>, user: Uuid) -> Watch {
        self.listen();
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
