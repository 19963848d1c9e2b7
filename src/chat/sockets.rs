//! Caps on the chat sockets open at once in this process, per user and per tenant: a member who
//! opens sockets by the thousand holds memory and tasks that other members and tenants need. Over
//! a cap the handshake is refused with `429 too_many_sockets`. The counts are per process (a
//! socket lives on the process it connected to); behind a load balancer the caps hold per server.
//!
//! The same places let a stopping server end its sockets: [`SocketCaps::close_all`] tells every
//! socket to finish (its answer in flight is finished or cut, and charged either way), and
//! [`SocketCaps::closed`] waits until the last place is given back.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Default)]
struct Counts {
    users: HashMap<Uuid, usize>,
    tenants: HashMap<Uuid, usize>,
}

pub struct SocketCaps {
    per_user: usize,
    per_tenant: usize,
    counts: Mutex<Counts>,
    /// sockets open in this process
    open: watch::Sender<usize>,
    closing: CancellationToken,
}

/// A socket's place under the caps, given back when it is dropped.
pub struct Slot {
    caps: Arc<SocketCaps>,
    tenant: Uuid,
    user: Uuid,
}

impl SocketCaps {
    pub fn new(per_user: usize, per_tenant: usize) -> Arc<Self> {
        Arc::new(Self {
            per_user,
            per_tenant,
            counts: Mutex::default(),
            open: watch::Sender::new(0),
            closing: CancellationToken::new(),
        })
    }

    /// Cancelled when the process stops: every socket finishes then.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Tells every socket to finish.
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    /// How many are open now.
    pub fn open_count(&self) -> usize {
        *self.open.borrow()
    }

    /// Resolves once no socket is open.
    pub async fn closed(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// A place for one more socket of `user` in `tenant`, if both caps allow it.
    pub fn open(self: &Arc<Self>, tenant: Uuid, user: Uuid) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (u, t) = (counts.users.get(&user).copied().unwrap_or(0), counts.tenants.get(&tenant).copied().unwrap_or(0));
        if u >= self.per_user || t >= self.per_tenant {
            return None;
        }
        counts.users.insert(user, u + 1);
        counts.tenants.insert(tenant, t + 1);
        self.open.send_modify(|n| *n += 1);
        Some(Slot { caps: self.clone(), tenant, user })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        fn give_back(map: &mut HashMap<Uuid, usize>, key: Uuid) {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        let mut counts = self.caps.counts.lock().unwrap_or_else(|e| e.into_inner());
        give_back(&mut counts.users, self.user);
        give_back(&mut counts.tenants, self.tenant);
        self.caps.open.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_user_and_tenant_and_given_back() {
        let caps = SocketCaps::new(2, 3);
        let (t, other_t) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let a1 = caps.open(t, a).unwrap();
        let _a2 = caps.open(t, a).unwrap();
        assert!(caps.open(t, a).is_none(), "per user");
        let _b1 = caps.open(t, b).unwrap();
        assert!(caps.open(t, c).is_none(), "per tenant");
        assert!(caps.open(other_t, c).is_some(), "another tenant has its own count");
        drop(a1);
        assert!(caps.open(t, c).is_some(), "a closed socket gives its place back");
        assert!(!caps.counts.lock().unwrap().users.contains_key(&c), "counts of zero are forgotten");
    }
}
