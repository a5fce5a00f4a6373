//! [`ResultTypeId`]: A call-result type of the tenant, e.g. `no-answer`.

super::string_id!(
    /// A call-result type of the tenant, e.g. `no-answer`.
    ResultTypeId,
    "result type id"
);
