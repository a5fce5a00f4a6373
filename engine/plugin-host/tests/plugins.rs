//! The plugin host against real plugins built from `plugins/`: the shipped plugins'
//! rule tables, hostile plugins refused or contained, and the compiled-plugin cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "plugins/business_hours.rs"]
mod business_hours;
#[path = "plugins/cache.rs"]
mod cache;
#[path = "plugins/decide.rs"]
mod decide;
#[path = "plugins/hostile.rs"]
mod hostile;
#[path = "plugins/standard.rs"]
mod standard;
#[path = "plugins/support.rs"]
mod support;
