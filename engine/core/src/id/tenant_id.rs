//! [`TenantId`]: A tenant (one company); nothing crosses tenants.

super::string_id!(
    /// A tenant (one company); nothing crosses tenants.
    TenantId,
    "tenant id"
);
