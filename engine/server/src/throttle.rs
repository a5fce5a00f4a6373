//! Login throttling: slows password guessing without locking the real user out.
//!
//! Owns: three limits checked before any password is hashed, so a throttled attempt
//! costs no Argon2 time:
//! - **per source address**: a token bucket over failed login attempts (any
//!   account), so one address cannot spray
//!   guesses across accounts or keep the hashing permits busy (a success gives
//!   back at most one attempt per account per [`REFUND_ONCE_PER`]);
//! - **per account and address**: after [`FREE_FAILURES`] attempts for one account
//!   from one address without a success, each further attempt from that address
//!   waits twice as long as the last ([`FIRST_DELAY`] doubling up to [`MAX_DELAY`]). A success
//!   clears it. Keyed by address too, so a flood against an account from one place
//!   does not stop its owner logging in from another;
//! - **per account, from addresses it never logged in from**: after
//!   [`ACCOUNT_FREE_FAILURES`] failures from anywhere, an attempt from an address
//!   without a success for that account waits as above, so guessing spread over
//!   many addresses is slowed too, while the owner's own address (a success within
//!   [`KNOWN_FOR`]) is never held up by it.
//!
//! IPv6 addresses count by their /64 (one host usually holds a whole /64).
//!
//! Does not own: the clock (every call takes `now`), what a refusal looks like on
//! the wire (the connection task), or checking the account name (the caller passes
//! a normalized email of at most [`MAX_ACCOUNT_CHARS`], so a key is small). State
//! is bounded: at most [`MAX_TRACKED`] keys per table; when full, the entries idle
//! longest are dropped first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Wrong passwords for one account from one address before delays start.
pub const FREE_FAILURES: u32 = 5;
/// The first delay after the free failures.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest delay between two attempts for one account from one address.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// Failed login attempts an address may make in a burst …
pub const ADDRESS_BURST: f64 = 30.0;
/// … and per minute after it.
pub const ADDRESS_PER_MINUTE: f64 = 30.0;
/// Keys each table remembers at most.
pub const MAX_TRACKED: usize = 65_536;
/// Longest account name the throttle keys on (an email is at most 254).
pub const MAX_ACCOUNT_CHARS: usize = 254;
/// Failures for one account, from any addresses, before unknown addresses wait.
pub const ACCOUNT_FREE_FAILURES: u32 = 50;
/// How long an address that logged in to an account stays known for it.
pub const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// A success gives its attempt back to the address at most this often per
/// account.
pub const REFUND_ONCE_PER: Duration = Duration::from_secs(60);

/// Why an attempt may not go ahead now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// How long until an attempt may go ahead.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// No attempt goes ahead before this.
    not_before: Instant,
    at: Instant,
}

/// The login throttle's state.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    addresses: HashMap<IpAddr, Bucket>,
    accounts: HashMap<(String, IpAddr), Failures>,
    /// Failures per account from any address.
    spread: HashMap<String, Failures>,
    /// When each address last logged in to each account.
    known: HashMap<(String, IpAddr), Instant>,
}

/// The key an address counts under: itself, or its /64 for IPv6.
pub(crate) fn source(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

fn fresh(now: Instant) -> Failures {
    Failures {
        count: 0,
        not_before: now,
        at: now,
    }
}

/// Records one more failure in `f` at `now`; past `free`, the next attempt waits.
fn fail(f: &mut Failures, free: u32, now: Instant) {
    f.count = f.count.saturating_add(1);
    f.at = now;
    if f.count > free {
        let doublings = (f.count - free - 1).min(16);
        let delay = FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY);
        f.not_before = now + delay;
    }
}

/// How long `f` still holds attempts back at `now`, if at all.
fn wait(f: Option<&Failures>, now: Instant) -> Result<(), Throttled> {
    match f {
        Some(f) if f.not_before > now => Err(Throttled {
            retry_after: f.not_before - now,
        }),
        _ => Ok(()),
    }
}

impl LoginThrottle {
    /// Takes one attempt for `account` from `address` at `now`, or says how long to
    /// wait. Call before hashing. The attempt counts as a failure from now on
    /// (so attempts racing in parallel cannot all slip through the free ones);
    /// [`Self::succeeded`] forgets it if the password was right.
    pub fn begin(&mut self, account: &str, address: IpAddr, now: Instant) -> Result<(), Throttled> {
        let address = source(address);
        let key = (account.to_owned(), address);
        wait(self.accounts.get(&key), now)?;
        let known = self
            .known
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_FOR);
        if !known {
            wait(self.spread.get(account), now)?;
        }
        if self.addresses.len() >= MAX_TRACKED && !self.addresses.contains_key(&address) {
            evict_idle(&mut self.addresses, |b| b.at);
        }
        let per_sec = ADDRESS_PER_MINUTE / 60.0;
        let bucket = self.addresses.entry(address).or_insert(Bucket {
            tokens: ADDRESS_BURST,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * per_sec;
        bucket.tokens = (bucket.tokens + refill).min(ADDRESS_BURST);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(Throttled {
                retry_after: Duration::from_secs_f64((1.0 - bucket.tokens) / per_sec),
            });
        }
        bucket.tokens -= 1.0;
        if self.accounts.len() >= MAX_TRACKED && !self.accounts.contains_key(&key) {
            evict_idle(&mut self.accounts, |f| f.at);
        }
        fail(
            self.accounts.entry(key).or_insert(fresh(now)),
            FREE_FAILURES,
            now,
        );
        if !known {
            if self.spread.len() >= MAX_TRACKED && !self.spread.contains_key(account) {
                evict_idle(&mut self.spread, |f| f.at);
            }
            fail(
                self.spread.entry(account.to_owned()).or_insert(fresh(now)),
                ACCOUNT_FREE_FAILURES,
                now,
            );
        }
        Ok(())
    }

    /// The right password: the account's failures from `address` are forgotten.
    /// Its attempt is given back to the address too, so an office of reps behind
    /// one address logging in at nine is never slowed: only failures use it up.
    /// The address becomes known for the account: failures spread over other
    /// addresses no longer hold it up.
    pub fn succeeded(&mut self, account: &str, address: IpAddr, now: Instant) {
        let address = source(address);
        let key = (account.to_owned(), address);
        self.accounts.remove(&key);
        let was_known = self
            .known
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_FOR);
        if !was_known && let Some(f) = self.spread.get_mut(account) {
            // `begin` counted this attempt against the account from anywhere.
            f.count = f.count.saturating_sub(1);
        }
        // One give-back per account and address per minute: an office's reps
        // each logging in are free, but one member logging in over and over (to
        // keep Argon2 busy, or to refill the address's allowance between guesses
        // at other accounts) spends the address's allowance like failures do.
        let recently = self
            .known
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < REFUND_ONCE_PER);
        if !recently && let Some(bucket) = self.addresses.get_mut(&address) {
            bucket.tokens = (bucket.tokens + 1.0).min(ADDRESS_BURST);
        }
        if self.known.len() >= MAX_TRACKED && !self.known.contains_key(&key) {
            evict_idle(&mut self.known, |at| *at);
        }
        self.known.insert(key, now);
    }
}

/// Drops the eighth of entries idle longest (amortized: one scan per many inserts).
fn evict_idle<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    at: impl Fn(&V) -> Instant,
) {
    let mut ages: Vec<(Instant, K)> = map.iter().map(|(k, v)| (at(v), k.clone())).collect();
    ages.sort_by_key(|(at, _)| *at);
    for (_, key) in ages.into_iter().take((map.len() / 8).max(1)) {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn failures_past_the_free_ones_wait_twice_as_long_each_time() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..=FREE_FAILURES {
            assert_eq!(t.begin("rep@a", A, now), Ok(()));
        }
        assert_eq!(
            t.begin("rep@a", A, now),
            Err(Throttled {
                retry_after: FIRST_DELAY
            })
        );
        let later = now + FIRST_DELAY;
        assert_eq!(t.begin("rep@a", A, later), Ok(()));
        assert_eq!(
            t.begin("rep@a", A, later),
            Err(Throttled {
                retry_after: FIRST_DELAY * 2
            })
        );
    }

    #[test]
    fn attempts_in_flight_count_before_their_passwords_are_checked() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        let allowed = (0..20).filter(|_| t.begin("rep@a", A, now).is_ok()).count();
        assert_eq!(allowed, FREE_FAILURES as usize + 1);
    }

    #[test]
    fn a_flood_from_one_address_does_not_stop_the_owner_logging_in_from_another() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..50 {
            let _ = t.begin("rep@a", A, now);
        }
        assert!(t.begin("rep@a", A, now).is_err());
        assert_eq!(t.begin("rep@a", B, now), Ok(()));
        t.succeeded("rep@a", B, now);
    }

    #[test]
    fn one_address_gets_its_burst_then_its_rate() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..ADDRESS_BURST as usize {
            assert_eq!(t.begin(&format!("user{i}@a"), A, now), Ok(()), "{i}");
        }
        let refused = t.begin("another@a", A, now).unwrap_err();
        assert!(refused.retry_after <= Duration::from_secs(2), "{refused:?}");
        assert_eq!(
            t.begin("another@a", A, now + Duration::from_secs(2)),
            Ok(())
        );
        assert_eq!(
            t.begin("another@a", B, now + Duration::from_secs(2)),
            Ok(())
        );
    }

    #[test]
    fn guessing_spread_over_many_addresses_is_slowed_but_not_for_the_owners_address() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        assert_eq!(t.begin("rep@a", B, now), Ok(()));
        t.succeeded("rep@a", B, now);
        let mut allowed = 0;
        for i in 0..200u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if t.begin("rep@a", ip, now).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, ACCOUNT_FREE_FAILURES + 1);
        assert_eq!(
            t.begin("rep@a", B, now),
            Ok(()),
            "the owner's address is known"
        );
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        let allowed = (0..20u128)
            .filter(|i| {
                let ip = IpAddr::V6(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | i));
                t.begin("rep@a", ip, now).is_ok()
            })
            .count();
        assert_eq!(allowed, FREE_FAILURES as usize + 1);
    }

    #[test]
    fn successes_do_not_use_up_the_address() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..(3 * ADDRESS_BURST as usize) {
            let account = format!("rep{i}@a");
            assert_eq!(t.begin(&account, A, now), Ok(()), "{i}");
            t.succeeded(&account, A, now);
        }
    }

    #[test]
    fn one_account_logging_in_over_and_over_uses_up_the_address() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        let allowed = (0..(3 * ADDRESS_BURST as usize))
            .filter(|_| {
                let ok = t.begin("rep@a", A, now).is_ok();
                if ok {
                    t.succeeded("rep@a", A, now);
                }
                ok
            })
            .count();
        // The first success gives its attempt back; the rest spend the burst.
        assert_eq!(allowed, ADDRESS_BURST as usize + 1);
        // A minute on (the burst refilled), a success gives its attempt back again:
        // the whole burst is left for other attempts.
        let later = now + REFUND_ONCE_PER;
        assert_eq!(t.begin("rep@a", A, later), Ok(()));
        t.succeeded("rep@a", A, later);
        let others = (0..(2 * ADDRESS_BURST as usize))
            .filter(|i| t.begin(&format!("x{i}@a"), A, later).is_ok())
            .count();
        assert_eq!(others, ADDRESS_BURST as usize);
    }

    #[test]
    fn a_success_forgets_the_failures() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..=FREE_FAILURES {
            let _ = t.begin("rep@a", A, now);
        }
        assert!(t.begin("rep@a", A, now).is_err());
        t.succeeded("rep@a", A, now);
        assert_eq!(t.begin("rep@a", A, now), Ok(()));
    }

    #[test]
    fn the_delay_is_capped() {
        let mut t = LoginThrottle::default();
        let mut now = Instant::now();
        for _ in 0..40 {
            if let Err(wait) = t.begin("rep@a", A, now) {
                now += wait.retry_after;
            }
        }
        now += MAX_DELAY;
        assert_eq!(t.begin("rep@a", A, now), Ok(()));
        assert_eq!(
            t.begin("rep@a", A, now),
            Err(Throttled {
                retry_after: MAX_DELAY
            })
        );
    }

    #[test]
    fn the_tables_stay_bounded() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED + 10) {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(i as u128));
            let _ = t.begin("rep@a", ip, now);
        }
        assert!(t.accounts.len() <= MAX_TRACKED);
        assert!(t.addresses.len() <= MAX_TRACKED);
    }
}
