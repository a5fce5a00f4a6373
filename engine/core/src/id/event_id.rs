//! [`EventId`]: One recorded lifecycle event; a duplicate delivery carries the same id and collapses.

super::string_id!(
    /// One recorded lifecycle event; a duplicate delivery carries the same id and collapses.
    EventId,
    "event id"
);
