//! Cancel requests: each client session gets its own BackendKeyData from the
//! proxy, mapped here to the backend session it stands for. A CancelRequest
//! with a matching key makes the proxy cancel the backend query; an unknown key
//! costs nothing but a map lookup, and cancel requests are rate limited per IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;

use crate::auth::secret::ct_eq;
use crate::config::Backend;

/// Cancel requests allowed per client IP per second (burst: twice that).
/// A real client cancels rarely; a scanner guessing keys is slowed to a crawl.
const CANCELS_PER_IP_PER_SECOND: u32 = 10;

/// The backend session a proxy key stands for.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Where to send the cancel.
    pub backend: Arc<Backend>,
    /// The backend's process id.
    pub pid: u32,
    /// The backend's secret key.
    pub secret: Bytes,
}

struct Entry {
    secret: [u8; 4],
    target: CancelTarget,
}

/// Process-wide map of proxy keys to backend sessions.
pub struct CancelRegistry {
    entries: Mutex<HashMap<u32, Entry>>,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for CancelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelRegistry").finish_non_exhaustive()
    }
}

impl Default for CancelRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes a session's key when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    /// The proxy's process id given to the client.
    pub pid: u32,
    /// The proxy's secret key given to the client.
    pub secret: [u8; 4],
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.entries.lock() {
            m.remove(&self.pid);
        }
    }
}

impl CancelRegistry {
    /// An empty registry.
    pub fn new() -> CancelRegistry {
        let per_second = NonZeroU32::new(CANCELS_PER_IP_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(CANCELS_PER_IP_PER_SECOND * 2).unwrap_or(NonZeroU32::MIN);
        CancelRegistry {
            entries: Mutex::new(HashMap::new()),
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        }
    }

    /// Gives a session a fresh random key (pid unique among live sessions).
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> Registration {
        let mut rng = rand::rngs::OsRng;
        let mut secret = [0u8; 4];
        rng.fill_bytes(&mut secret);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let pid = loop {
            // Positive i32 like a real PostgreSQL pid, so clients that print it are not confused.
            let pid = rng.next_u32() & 0x7fff_ffff;
            if pid != 0 && !entries.contains_key(&pid) {
                break pid;
            }
        };
        entries.insert(pid, Entry { secret, target });
        Registration {
            registry: self.clone(),
            pid,
            secret,
        }
    }

    /// The target for a key, comparing the secret in constant time.
    pub fn lookup(&self, pid: u32, secret: &[u8]) -> Option<CancelTarget> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = entries.get(&pid)?;
        ct_eq(&e.secret, secret).then(|| e.target.clone())
    }

    /// Whether `ip` may send another cancel request now.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let ok = self.limiter.check_key(&ip).is_ok();
        if self.limiter.len() > 100_000 {
            // Bounded memory under a flood from many addresses.
            self.limiter.retain_recent();
        }
        ok
    }

    /// Live registrations (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
