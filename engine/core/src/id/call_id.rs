//! [`CallId`]: A call: one request to dial (or one manual call) and everything recorded on it.

super::string_id!(
    /// A call: one request to dial (or one manual call) and everything recorded on it.
    CallId,
    "call id"
);
