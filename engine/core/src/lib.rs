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
//! # Document schema, version 1
//!
//! One Automerge document per customer. The root map:
//!
//! | key | Automerge type | meaning |
//! |---|---|---|
//! | `schema` | uint | schema version, `1` |
//! | `tenant` | scalar string | the owning tenant's id; never changes |
//! | `customer` | scalar string | the customer's id; never changes |
//! | `created_at` | timestamp | creation time (UTC ms) |
//! | `profile` | map | `company`, `contact`, `owner`: scalar strings, last writer wins |
//! | `phones` | map keyed by normalized digits (`0312345678`) | each a map of `label` and `number` (as written), scalar strings |
//! | `events` | map keyed by `<call id>/<event id>` | each a scalar string holding one [`CallEvent`] as JSON |
//!
//! Why this shape:
//! - **Events are immutable, one scalar each.** An event is written once and never
//!   edited, so per-field CRDT merging buys nothing; one op per event keeps documents
//!   small and loads fast. JSON keeps it readable from JavaScript (`JSON.parse`).
//! - **A map keyed by event id, never a list**: a duplicate delivery lands on the
//!   same key and collapses; merge order cannot matter. Keys start with the call id
//!   so one call's events are a range read.
//! - **No nested object is created concurrently on a hot path**: every call lives in
//!   the flat `events` map (created with the document), so two replicas can never
//!   each create "the" object of a call and have one hidden by the other.
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
//! [`CoreError::UnsupportedSchema`] (never guess), and read every older version by
//! interpreting it, writing only new-version data from then on, so two replicas
//! migrating concurrently write no conflicting ops. Event kinds a reader does not
//! know are reported as unreadable and ignored.
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
