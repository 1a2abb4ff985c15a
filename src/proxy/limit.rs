//! Back-pressure (spec §4): a token bucket per peer, two concurrency slots
//! per peer, eight in all, and at most one SSH fetch per node at a time.
//!
//! Rejections are immediate (nothing queues), so a flooding peer costs the
//! others one failed `admit` per connection. A token is spent even when a
//! concurrency check then refuses, as in the stock proxy. Idle peers are
//! forgotten after ten minutes, and the table is capped, so the memory held
//! is bounded whatever the peers do.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Concurrency slots per peer.
pub const PER_PEER: u32 = 2;
/// Concurrency slots in all.
pub const GLOBAL: u32 = 8;
/// Peers not seen for this long are forgotten...
const IDLE: Duration = Duration::from_secs(600);
/// ...when a purge runs, at most this often.
const PURGE_EVERY: Duration = Duration::from_secs(300);
/// The most peers tracked at once; past it, idle ones are dropped early.
const MAX_PEERS: usize = 4096;

struct Bucket {
    tokens: f64,
    refilled: Instant,
    inflight: u32,
}

struct State {
    peers: HashMap<String, Bucket>,
    global: u32,
    purged: Instant,
}

/// The per-peer limiter. Share it in an `Arc`; [`Permit`]s give their
/// slots back when dropped.
pub struct Limiter {
    interval: Duration,
    burst: u32,
    state: Mutex<State>,
}

/// Two concurrency slots (the peer's and a global one), held while a
/// connection is handled.
pub struct Permit {
    limiter: Arc<Limiter>,
    key: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limiter.lock();
        s.global = s.global.saturating_sub(1);
        if let Some(b) = s.peers.get_mut(&self.key) {
            b.inflight = b.inflight.saturating_sub(1);
        }
    }
}

impl Limiter {
    /// One token every `interval`, up to `burst` saved.
    pub fn new(interval: Duration, burst: u32) -> Limiter {
        Limiter {
            interval: interval.max(Duration::from_millis(1)),
            burst: burst.max(1),
            state: Mutex::new(State {
                peers: HashMap::new(),
                global: 0,
                purged: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A permit for `key`, or why not: `rate`, `global_concurrency` or
    /// `peer_concurrency`.
    pub fn admit(self: &Arc<Self>, key: &str) -> Result<Permit, &'static str> {
        let now = Instant::now();
        let mut s = self.lock();
        let rate = self.interval.as_secs_f64();
        let burst = f64::from(self.burst);
        let full = s.peers.len() >= MAX_PEERS && !s.peers.contains_key(key);
        if now.duration_since(s.purged) >= PURGE_EVERY || full {
            s.purged = now;
            // Forgotten: idle peers, and (when the table is full) peers
            // whose bucket has refilled, which come back the same. A peer
            // still paying for a burst is kept, or forgetting it would
            // give it a new one.
            s.peers.retain(|_, b| {
                let idle = now.duration_since(b.refilled);
                let refilled = b.tokens + idle.as_secs_f64() / rate >= burst;
                b.inflight > 0 || (idle < IDLE && !(full && refilled))
            });
            if s.peers.len() >= MAX_PEERS {
                return Err("rate");
            }
        }
        let b = s.peers.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            refilled: now,
            inflight: 0,
        });
        let earned = now.duration_since(b.refilled).as_secs_f64() / rate;
        b.tokens = (b.tokens + earned).min(burst);
        b.refilled = now;
        if b.tokens < 1.0 {
            return Err("rate");
        }
        b.tokens -= 1.0;
        let peer_full = b.inflight >= PER_PEER;
        if s.global >= GLOBAL {
            return Err("global_concurrency");
        }
        if peer_full {
            return Err("peer_concurrency");
        }
        s.global += 1;
        if let Some(b) = s.peers.get_mut(key) {
            b.inflight += 1;
        }
        Ok(Permit {
            limiter: Arc::clone(self),
            key: key.to_string(),
        })
    }

    /// Global slots in use.
    pub fn inflight(&self) -> u32 {
        self.lock().global
    }

    /// Peers tracked.
    pub fn peers(&self) -> usize {
        self.lock().peers.len()
    }
}

/// At most one fetch per node: later callers wait (until their deadline)
/// instead of opening a second SSH session to the same host.
#[derive(Default)]
pub struct NodeGate {
    busy: Mutex<BTreeSet<String>>,
    freed: Condvar,
}

/// Holds a node's turn; dropping it lets the next caller in.
pub struct NodeTurn<'a> {
    gate: &'a NodeGate,
    node: String,
}

impl Drop for NodeTurn<'_> {
    fn drop(&mut self) {
        let mut busy = self.gate.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.node);
        self.gate.freed.notify_all();
    }
}

impl NodeGate {
    /// Waits for `node`'s turn; `None` once `deadline` passes.
    pub fn enter(&self, node: &str, deadline: Instant) -> Option<NodeTurn<'_>> {
        // One node, one turn, however it is written (`::ffff:10.0.0.1`).
        let key = match node.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_canonical().to_string(),
            Err(_) => node.to_ascii_lowercase(),
        };
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(&key) {
            let left = deadline.checked_duration_since(Instant::now())?;
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        busy.insert(key.clone());
        Some(NodeTurn {
            gate: self,
            node: key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let l = Arc::new(Limiter::new(Duration::from_secs(3600), 3));
        for _ in 0..3 {
            drop(l.admit("uid:1").unwrap());
        }
        assert_eq!(l.admit("uid:1").err(), Some("rate"));
        // Another peer has its own bucket.
        assert!(l.admit("uid:2").is_ok());
    }

    #[test]
    fn concurrency_slots_per_peer_and_global() {
        let l = Arc::new(Limiter::new(Duration::from_millis(1), 100));
        let a = [l.admit("a").unwrap(), l.admit("a").unwrap()];
        assert_eq!(l.admit("a").err(), Some("peer_concurrency"));
        let mut held: Vec<Permit> = (0..6).map(|i| l.admit(&format!("p{i}")).unwrap()).collect();
        assert_eq!(l.inflight(), GLOBAL);
        assert_eq!(l.admit("other").err(), Some("global_concurrency"));
        held.pop();
        assert!(l.admit("other").is_ok());
        drop(a);
        assert_eq!(l.inflight(), GLOBAL - 3);
    }

    /// Review: with the table full, every peer not in flight was dropped,
    /// so a rate-limited peer got a new burst from a flood of other keys.
    #[test]
    fn a_full_table_does_not_refill_a_rate_limited_peer() {
        let l = Arc::new(Limiter::new(Duration::from_secs(3600), 2));
        for _ in 0..2 {
            drop(l.admit("victim").unwrap());
        }
        assert_eq!(l.admit("victim").err(), Some("rate"));
        for i in 0..MAX_PEERS * 2 {
            let _ = l.admit(&format!("k{i}"));
        }
        assert!(l.peers() <= MAX_PEERS);
        assert_eq!(l.admit("victim").err(), Some("rate"));
    }

    #[test]
    fn the_node_gate_serialises_one_node_and_times_out() {
        let g = NodeGate::default();
        let t = g.enter("PVE1", Instant::now()).unwrap();
        assert!(
            g.enter("pve1", Instant::now() + Duration::from_millis(50))
                .is_none()
        );
        assert!(g.enter("pve2", Instant::now()).is_some());
        drop(t);
        assert!(g.enter("pve1", Instant::now()).is_some());
    }
}
