//! How many connections one peer may hold open: per source address (any
//! connection, and those not yet authenticated), in total before login, and per
//! member and device once joined.
//!
//! Owns: the counts and their caps, and the slots that hold a count for as long
//! as a connection lives (dropping a slot gives it back). Does not own: what a
//! connection does, or telling the peer (the accept loop and the connection task
//! do, with the refusal a check returns).
//!
//! Why: every connection costs the server buffers, a task and a share of the
//! hub; a token may otherwise open any number of them, and an address any number
//! of handshakes. The caps sit well above what an honest office needs (a
//! hundred reps with a phone and a browser each behind one address) and well
//! below what exhausts the server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use callsync_core::wire::Refusal;
use callsync_core::{DeviceId, UserId};
use callsync_session::Authenticated;

use crate::throttle::source;

/// Connections one source address may hold, in any state (IPv6 by /64).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 1_024;
/// Connections one source address may hold before they authenticate.
pub const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 64;
/// Connections not yet authenticated, from everywhere.
pub const MAX_UNAUTHENTICATED: usize = 4_096;
/// Past this many unauthenticated connections, a new one must first prove its
/// address (a QUIC Retry) before the server keeps any state for it.
pub const RETRY_ABOVE_UNAUTHENTICATED: usize = 256;
/// Joined connections one member may hold (phone, desk, browser tabs,
/// reconnects whose old connection has not timed out yet).
pub const MAX_CONNECTIONS_PER_MEMBER: usize = 16;
/// Joined connections one device may hold (browser tabs share a device; a phone
/// changing networks reconnects before its old connection times out).
pub const MAX_CONNECTIONS_PER_DEVICE: usize = 6;

#[derive(Default)]
struct Counts {
    by_address: HashMap<IpAddr, usize>,
    unauthenticated_by_address: HashMap<IpAddr, usize>,
    unauthenticated: usize,
    by_member: HashMap<UserId, usize>,
    by_device: HashMap<DeviceId, usize>,
}

/// Takes one from a count, dropping the key at zero so the maps hold only live
/// peers.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// The server's connection counts.
#[derive(Default)]
pub(crate) struct ConnectionLimits {
    counts: Mutex<Counts>,
}

/// What the accept loop does with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Go ahead, holding this slot.
    Accept,
    /// Ask the peer to prove its address first (QUIC Retry).
    Retry,
    /// Refuse it: the address or the server holds too many.
    Refuse,
}

impl ConnectionLimits {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        // Counts stay consistent at every step; a poisoned lock is still usable.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a connection from `address` may start (`validated`: the peer has
    /// proven it receives at that address).
    pub(crate) fn admit(&self, address: IpAddr, validated: bool) -> Admit {
        let address = source(address);
        let counts = self.counts();
        if counts.by_address.get(&address).copied().unwrap_or(0) >= MAX_CONNECTIONS_PER_ADDRESS
            || counts
                .unauthenticated_by_address
                .get(&address)
                .copied()
                .unwrap_or(0)
                >= MAX_UNAUTHENTICATED_PER_ADDRESS
            || counts.unauthenticated >= MAX_UNAUTHENTICATED
        {
            return Admit::Refuse;
        }
        if !validated && counts.unauthenticated >= RETRY_ABOVE_UNAUTHENTICATED {
            return Admit::Retry;
        }
        Admit::Accept
    }

    /// Counts a connection from `address` that has not authenticated yet.
    pub(crate) fn open(self: &Arc<Self>, address: IpAddr) -> AddressSlot {
        let address = source(address);
        let mut counts = self.counts();
        *counts.by_address.entry(address).or_default() += 1;
        *counts
            .unauthenticated_by_address
            .entry(address)
            .or_default() += 1;
        counts.unauthenticated += 1;
        AddressSlot {
            limits: self.clone(),
            address,
            unauthenticated: true,
        }
    }

    /// Counts a joined connection for its member and device, unless either holds
    /// its cap already: then the refusal to close with.
    pub(crate) fn join(
        self: &Arc<Self>,
        member: &Authenticated,
        address: &mut AddressSlot,
    ) -> Result<MemberSlot, Refusal> {
        let mut counts = self.counts();
        let device = counts.by_device.get(&member.device).copied().unwrap_or(0);
        if device >= MAX_CONNECTIONS_PER_DEVICE {
            return Err(Refusal::TooManyConnections {
                per: "device",
                max: MAX_CONNECTIONS_PER_DEVICE,
            });
        }
        let user = counts.by_member.get(&member.user).copied().unwrap_or(0);
        if user >= MAX_CONNECTIONS_PER_MEMBER {
            return Err(Refusal::TooManyConnections {
                per: "member",
                max: MAX_CONNECTIONS_PER_MEMBER,
            });
        }
        *counts.by_device.entry(member.device.clone()).or_default() += 1;
        *counts.by_member.entry(member.user.clone()).or_default() += 1;
        if address.unauthenticated {
            address.unauthenticated = false;
            release(&mut counts.unauthenticated_by_address, &address.address);
            counts.unauthenticated = counts.unauthenticated.saturating_sub(1);
        }
        Ok(MemberSlot {
            limits: self.clone(),
            device: member.device.clone(),
            user: member.user.clone(),
        })
    }

    /// Connections from everywhere that have not authenticated.
    #[cfg(test)]
    pub(crate) fn unauthenticated(&self) -> usize {
        self.counts().unauthenticated
    }
}

/// A connection's place in its address's counts, for as long as it lives.
pub(crate) struct AddressSlot {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
    unauthenticated: bool,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts();
        release(&mut counts.by_address, &self.address);
        if self.unauthenticated {
            release(&mut counts.unauthenticated_by_address, &self.address);
            counts.unauthenticated = counts.unauthenticated.saturating_sub(1);
        }
    }
}

/// A joined connection's place in its member's and device's counts.
pub(crate) struct MemberSlot {
    limits: Arc<ConnectionLimits>,
    device: DeviceId,
    user: UserId,
}

impl Drop for MemberSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts();
        release(&mut counts.by_device, &self.device);
        release(&mut counts.by_member, &self.user);
    }
}

/// A token bucket per key (a member's requests of one kind), with a cap on how
/// many keys it remembers (the fullest are forgotten first: they are the least
/// limited).
pub(crate) struct RatePerKey<K> {
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<K, (f64, std::time::Instant)>>,
}

/// Keys a [`RatePerKey`] remembers at most.
const MAX_RATE_KEYS: usize = 65_536;

impl<K: std::hash::Hash + Eq + Clone> RatePerKey<K> {
    pub(crate) fn new(burst: f64, per_sec: f64) -> Self {
        Self {
            burst,
            per_sec,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one for `key` at `now`, if it has one.
    pub(crate) fn allow(&self, key: &K, now: std::time::Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_RATE_KEYS && !buckets.contains_key(key) {
            let (burst, per_sec) = (self.burst, self.per_sec);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        *at = (*at).max(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Connections counted per address and in all, against two caps: for a listener
/// that keeps no other state per peer (the page's).
pub(crate) struct AddressCounts {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl AddressCounts {
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Self {
        Self {
            max_total,
            max_per_address,
            counts: Mutex::new((0, HashMap::new())),
        }
    }

    fn counts(&self) -> MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a connection from `address`, or `None` past either cap.
    pub(crate) fn open(self: &Arc<Self>, address: IpAddr) -> Option<CountSlot> {
        let address = source(address);
        let mut counts = self.counts();
        let here = counts.1.get(&address).copied().unwrap_or(0);
        if counts.0 >= self.max_total || here >= self.max_per_address {
            return None;
        }
        counts.0 += 1;
        *counts.1.entry(address).or_default() += 1;
        Some(CountSlot {
            counts: self.clone(),
            address,
        })
    }
}

/// A connection's place in [`AddressCounts`], given back when dropped.
pub(crate) struct CountSlot {
    counts: Arc<AddressCounts>,
    address: IpAddr,
}

impl Drop for CountSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts();
        counts.0 = counts.0.saturating_sub(1);
        release(&mut counts.1, &self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsync_core::{DeviceKind, Role, TenantId, Timestamp};

    fn member(user: &str, device: &str) -> Authenticated {
        Authenticated {
            tenant: TenantId::new("acme").unwrap(),
            user: UserId::new(user).unwrap(),
            role: Role::User,
            device: DeviceId::new(device).unwrap(),
            kind: DeviceKind::Phone,
            expires_at: Timestamp::from_millis(i64::MAX / 2),
        }
    }

    #[test]
    fn a_device_and_a_member_hold_at_most_their_caps_and_get_them_back_on_close() {
        let limits = Arc::new(ConnectionLimits::default());
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        let phone = member("rep@acme.example", "phone-1");
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_DEVICE {
            let mut slot = limits.open(address);
            held.push((limits.join(&phone, &mut slot).unwrap(), slot));
        }
        let mut slot = limits.open(address);
        let refused = limits.join(&phone, &mut slot).err().unwrap();
        assert_eq!(refused.body().code, "too-many-connections");
        // Another device of the same member, up to the member's cap.
        let mut other = 0;
        loop {
            let mut slot = limits.open(address);
            match limits.join(
                &member("rep@acme.example", &format!("d-{other}")),
                &mut slot,
            ) {
                Ok(joined) => held.push((joined, slot)),
                Err(e) => {
                    assert!(e.to_string().contains("member"), "{e}");
                    break;
                }
            }
            other += 1;
        }
        assert_eq!(held.len(), MAX_CONNECTIONS_PER_MEMBER);
        held.clear();
        let mut slot = limits.open(address);
        assert!(limits.join(&phone, &mut slot).is_ok());
    }

    #[test]
    fn an_address_holds_few_unauthenticated_connections_and_many_joined_ones() {
        let limits = Arc::new(ConnectionLimits::default());
        let address: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::2".parse().unwrap();
        let mut waiting: Vec<AddressSlot> = (0..MAX_UNAUTHENTICATED_PER_ADDRESS)
            .map(|_| limits.open(address))
            .collect();
        assert_eq!(limits.admit(same_64, true), Admit::Refuse);
        assert_eq!(
            limits.admit("2001:db9::1".parse().unwrap(), true),
            Admit::Accept
        );
        // Joining frees the unauthenticated place but keeps the address's.
        let mut slot = waiting.pop().unwrap();
        let _joined = limits
            .join(&member("a@acme.example", "d"), &mut slot)
            .unwrap();
        assert_eq!(limits.admit(address, true), Admit::Accept);
        assert_eq!(
            limits.unauthenticated(),
            MAX_UNAUTHENTICATED_PER_ADDRESS - 1
        );
        drop(waiting);
        assert_eq!(limits.unauthenticated(), 0);
    }

    #[test]
    fn a_key_gets_its_burst_then_its_rate_and_keys_do_not_share() {
        let rate = RatePerKey::new(3.0, 1.0);
        let start = std::time::Instant::now();
        for _ in 0..3 {
            assert!(rate.allow(&"a", start));
        }
        assert!(!rate.allow(&"a", start));
        assert!(rate.allow(&"b", start));
        assert!(rate.allow(&"a", start + std::time::Duration::from_millis(1_001)));
        assert!(!rate.allow(&"a", start + std::time::Duration::from_millis(1_002)));
    }

    #[test]
    fn address_counts_hold_their_caps_and_give_places_back() {
        let counts = Arc::new(AddressCounts::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counts.open(a).unwrap();
        let _second = counts.open(a).unwrap();
        assert!(counts.open(a).is_none(), "per address");
        let _third = counts.open(b).unwrap();
        assert!(counts.open(b).is_none(), "in all");
        drop(first);
        assert!(counts.open(a).is_some());
    }

    #[test]
    fn under_load_new_connections_must_prove_their_address() {
        let limits = Arc::new(ConnectionLimits::default());
        let held: Vec<AddressSlot> = (0..RETRY_ABOVE_UNAUTHENTICATED)
            .map(|i| limits.open(IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8])))
            .collect();
        let fresh: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(limits.admit(fresh, false), Admit::Retry);
        assert_eq!(limits.admit(fresh, true), Admit::Accept);
        drop(held);
        assert_eq!(limits.admit(fresh, false), Admit::Accept);
    }
}
