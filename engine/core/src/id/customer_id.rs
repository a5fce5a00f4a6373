//! [`CustomerId`]: A customer, and so the one document that holds it.

super::string_id!(
    /// A customer, and so the one document that holds it.
    CustomerId,
    "customer id"
);
