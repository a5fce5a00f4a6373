//! The page's TypeScript declarations of the wire and of the engine's outputs
//! (`clients/web/src/generated/`) are generated from the Rust types, never
//! written by hand: this test generates them into a scratch directory and
//! fails when the committed files differ. `CALLSYNC_BLESS=1 cargo test -p
//! callsync-web --test typescript` writes them in place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use callsync_core::ResultCatalog;
use callsync_core::tenant_config::PluginListing;
use callsync_core::wire::{CustomerSummary, RpcCall, RpcResult};
use callsync_session::device::Unsent;
use callsync_session::device::actions::ResultForm;
use callsync_session::device::listing::CustomerListing;
use callsync_web::views::{
    CustomerDetail, EngineEvent, ErrorView, LoginAnswer, PageState, SaveOutcomeView, Vocabulary,
};
use ts_rs::{Config, TS};

fn generated_dir() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.join("../src/generated")
}

/// Writes every declaration the page imports (and those they name) into `dir`.
fn export_into(dir: &Path) {
    // Timestamps and tickets are integers well inside 2^53: numbers, as JSON.
    let config = Config::new().with_large_int("number").with_out_dir(dir);
    RpcCall::export_all(&config).unwrap();
    RpcResult::export_all(&config).unwrap();
    CustomerSummary::export_all(&config).unwrap();
    ResultCatalog::export_all(&config).unwrap();
    PluginListing::export_all(&config).unwrap();
    CustomerListing::export_all(&config).unwrap();
    Unsent::export_all(&config).unwrap();
    ResultForm::export_all(&config).unwrap();
    EngineEvent::export_all(&config).unwrap();
    PageState::export_all(&config).unwrap();
    LoginAnswer::export_all(&config).unwrap();
    SaveOutcomeView::export_all(&config).unwrap();
    CustomerDetail::export_all(&config).unwrap();
    ErrorView::export_all(&config).unwrap();
    Vocabulary::export_all(&config).unwrap();
    callsync_core::UploadState::export_all(&config).unwrap();
}

fn files(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ts"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_pages_types_are_generated_from_the_rust_types() {
    let committed = generated_dir();
    if std::env::var_os("CALLSYNC_BLESS").is_some() {
        for name in files(&committed).keys() {
            std::fs::remove_file(committed.join(name)).unwrap();
        }
        export_into(&committed);
    }
    let scratch = tempfile::tempdir().unwrap();
    export_into(scratch.path());
    let (want, have) = (files(scratch.path()), files(&committed));
    assert!(
        want.len() > 20,
        "only {} declarations generated",
        want.len()
    );
    let stale: Vec<&String> = want
        .iter()
        .filter(|(name, text)| have.get(*name) != Some(text))
        .map(|(name, _)| name)
        .chain(have.keys().filter(|name| !want.contains_key(*name)))
        .collect();
    assert!(
        stale.is_empty(),
        "clients/web/src/generated is out of date ({stale:?}): run \
         `CALLSYNC_BLESS=1 cargo test -p callsync-web --test typescript`"
    );
}
