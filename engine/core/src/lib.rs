//! The callsync engine core: customer documents and the race-safe call lifecycle.
//!
//! Owns: the customer document schema, the call lifecycle events, the derived call
//! state, the rules that refuse bad actions, and their typed errors.
//! Does not own: sockets, SQLite, clocks, randomness, threads. Every time is passed
//! in (an event's [`Stamp`] carries its device's clock), every id and Automerge actor
//! id comes from the host. The crate builds for `wasm32-unknown-unknown`.
//!
//! Call order for a host: create or load a [`CustomerDoc`]; to act, build a
//! [`CallEvent`] stamped with the device, user and time, and pass it to
//! [`CustomerDoc::record`] with a [`RuleContext`]; read with
//! [`CustomerDoc::customer`]; persist the Automerge bytes.
//!
//! # Document schema, version 2
//!
//! One Automerge document per customer. The root map:
//!
//! | key | Automerge type | meaning |
//! |---|---|---|
//! | `schema` | uint | schema version, `2` (`1` until the server upgrades a document written before) |
//! | `tenant` | scalar string | the owning tenant's id; never changes |
//! | `customer` | scalar string | the customer's id; never changes |
//! | `created_at` | timestamp | creation time (UTC ms) |
//! | `profile` | map | `company`, `contact`, `owner`: scalar strings, last writer wins |
//! | `phones` | map keyed by normalized digits (`0312345678`) | each a map of `label` and `number` (as written), scalar strings |
//! | `calls` | map of 16 bucket maps keyed `0`…`f` | created with the document (or by the server's upgrade); never rewritten |
//! | `calls/<bucket>/<call id>` | map keyed by event id | one call's events, each a scalar string holding one [`CallEvent`] as JSON; the bucket is [`document::call_bucket`] of the call id |
//! | `events` | map keyed by `<call id>/<event id>` | schema 1's events (see the migration rule); empty in documents created as schema 2 |
//!
//! Why this shape:
//! - **A call's events in a small map of their own.** Automerge 0.12 merges an op
//!   into its object by walking that object's ops from the start, so the cost of
//!   applying an event is the size of the object it lands in. In schema 1 every
//!   event went into one map, and each new event cost a walk over the customer's
//!   whole history; now an event of a call costs a walk over that call's few
//!   events, and a new call's map one over its bucket (1/16 of the calls).
//! - **Events are immutable, one scalar each.** An event is written once and never
//!   edited, so per-field CRDT merging buys nothing; one op per event keeps documents
//!   small and loads fast. JSON keeps it readable from JavaScript (`JSON.parse`).
//! - **Maps keyed by event id, never lists**: a duplicate delivery lands on the
//!   same key and collapses (the same event written twice is two identical
//!   values under one key, read once); merge order cannot matter, since a map key's
//!   value does not depend on the order ops arrive in.
//! - **No object is ever created by two replicas as "the" same object.** The
//!   `calls` map and its buckets are created once, with the document, by the
//!   server (the only creator of customers), or by the server's upgrade of a
//!   schema 1 document; devices never create them. A call's map is created by the
//!   change that records the call's origin (`requested` or `manual-call`), on the
//!   one device that draws the call's id; every other replica learns the call,
//!   map included, before it can act on it. The server's admission refuses a
//!   change that creates a map under a key that already has one, in another
//!   bucket than the call's, empty, or for a call kept in the flat map, and
//!   refuses any other write to the root, `calls` or a bucket. Should a
//!   misbehaving writer get two maps under one key anyway, readers read every
//!   conflicting map (`get_all`), so neither hides the other's events.
//! - **Scalar strings, not Text**: no field needs character-level concurrent
//!   editing; scalars load ~5x faster than Text and read the same in Rust and JS.
//! - **Nothing derived is stored**: call phases, flags, the customer status and the
//!   recall or restriction in force are computed from the events on every read, so
//!   replicas that hold the same events agree, whatever order they arrived in.
//!
//! # Migration rule
//!
//! Adding an optional field to an event or a new key readers can ignore does not
//! change the version. Anything an older reader would misread raises
//! [`SCHEMA_VERSION`]; readers refuse documents newer than they know with
//! [`CoreError::UnsupportedSchema`] (never guess), and a build that changes the
//! schema also raises [`wire::PROTOCOL_VERSION`], so a device still on the older
//! build is refused at `join` (`unsupported-protocol`, told in Japanese to
//! update) before it syncs anything.
//!
//! Schema 1 to 2: the **server** upgrades each stored document once, when the
//! new build first opens its store ([`CustomerDoc::upgrade`]: one change adding
//! `calls` and its buckets and setting `schema` to 2). Nothing already recorded
//! moves: events stay where they were written, and readers read both places (an
//! event id in both reads as the per-call one). Devices never upgrade a document
//! themselves (two replicas each creating "the" buckets would hide one set); a
//! device running the new build on a schema 1 document keeps writing calls it
//! does not yet have a map for into the flat `events` map, exactly as schema 1
//! did, until the server's upgrade reaches it by sync. From then on a new call
//! gets its own map, and a call kept in the flat map stays there (its later
//! events go where its origin is), so each call lives in one place. Offline
//! changes made under schema 1 are ordinary changes to the flat map: they sync
//! and are admitted as they are, after the upgrade too.
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod account;
pub mod admission;
pub mod catchup;
pub mod customer;
pub mod document;
pub mod error;
pub mod event;
pub mod holidays;
pub mod id;
pub mod lifecycle;
pub mod phone_number;
pub mod plugin;
pub mod recording;
pub mod result_type;
pub mod rules;
pub mod screen;
pub mod sync_receive;
pub mod tenant_config;
pub mod time;
pub mod wire;

pub use account::Role;
pub use automerge::ActorId;
pub use customer::{Customer, CustomerStatus, NewCustomer, PhoneEntry, TimelineEntry};
pub use document::{CustomerDoc, SCHEMA_VERSION, Summary};
pub use error::CoreError;
pub use event::{CallEvent, DeviceKind, EventKind, RecordingRef, SavedResultFields, Stamp};
pub use id::{CallId, CustomerId, DeviceId, EventId, ResultTypeId, TenantId, UserId};
pub use lifecycle::{
    Anomaly, AnomalyReason, CallOrigin, CallView, Flag, Phase, RecordingState, SavedResult,
};
pub use phone_number::PhoneNumber;
pub use recording::{RecordingCode, UploadState, UploadStatus};
pub use result_type::{OptionKind, ResultCatalog, ResultOption, ResultTypeSpec, TimeEntry};
pub use rules::{OpenCall, RuleContext};
pub use time::Timestamp;
