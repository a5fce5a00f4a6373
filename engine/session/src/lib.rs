//! The sync protocol as sans-IO sessions: state machines that take inputs with the
//! time they happen and answer with effects, and never touch a socket, a clock, a
//! file or a thread.
//!
//! Owns: the [`device`] session every device kind runs (login, connection phases,
//! reconnects, the server's clock, requests, refusals, the rep's actions and the
//! result flow, logout) around the device's [`client`] sync session (join,
//! catch-up cursor, outbox, applying
//! the server's sync messages, the configuration document, presence, refusals,
//! reconnect timing), the server's [`hub`] session (admission, fan-out, subscriptions, catch-up,
//! expiry, presence, the tenant configuration), the [`connection`] rules every
//! server connection follows before and after it joins (first message, protocol
//! version, message rate, what goes where), the [`storage`] interface the hub asks
//! through, and the [`rules`] interface the plugin host implements.
//! Does not own: sockets, timers, SQLite, threads, Argon2 or wasmtime: the hosts
//! (`callsync-server` today; the browser and a PostgreSQL server later) drive the
//! sessions and carry out their effects. Builds for `wasm32-unknown-unknown`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod connection;
pub mod device;
pub mod hub;
pub mod rules;
pub mod storage;

use callsync_core::{DeviceId, DeviceKind, Role, TenantId, Timestamp, UserId};

/// A connection's number, unique for the server's lifetime (the driver counts).
pub type ConnId = u64;

/// Who a connection was authenticated as at `join`: the member, their device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// Their role.
    pub role: Role,
    /// The device.
    pub device: DeviceId,
    /// Desk or phone.
    pub kind: DeviceKind,
    /// When the token stops working.
    pub expires_at: Timestamp,
}
