//! [`DeviceId`]: A device: a desk (browser), a phone or a server.

super::string_id!(
    /// A device: a desk (browser), a phone or a server.
    DeviceId,
    "device id"
);
