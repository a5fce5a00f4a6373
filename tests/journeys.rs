//! User journeys across real processes: the `callsync` binary on a real SQLite
//! data directory. One module per journey.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "journeys/call_flow.rs"]
mod call_flow;
#[path = "journeys/clocks.rs"]
mod clocks;
#[path = "journeys/crash.rs"]
mod crash;
#[path = "journeys/durability.rs"]
mod durability;
#[path = "journeys/exhaustion.rs"]
mod exhaustion;
#[path = "journeys/hardening.rs"]
mod hardening;
#[path = "journeys/import.rs"]
mod import;
#[path = "journeys/network.rs"]
mod network;
#[path = "journeys/plugins.rs"]
mod plugins;
#[path = "journeys/recordings.rs"]
mod recordings;
#[path = "journeys/refusals.rs"]
mod refusals;
#[path = "journeys/security.rs"]
mod security;
#[path = "journeys/support.rs"]
mod support;
#[path = "journeys/sync.rs"]
mod sync;
#[path = "journeys/tenants.rs"]
mod tenants;
#[path = "journeys/upgrade.rs"]
mod upgrade;
#[path = "journeys/webtransport.rs"]
mod webtransport;
