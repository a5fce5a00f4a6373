//! [`UserId`]: A user (the CRM login, usually an email address).

super::string_id!(
    /// A user (the CRM login, usually an email address).
    UserId,
    "user id"
);
