//! Every file in `fixtures/crashers` is a damaged or foreign document: reading it
//! must give a typed error, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use callsync_core::{ActorId, CoreError, CustomerDoc};

fn read(bytes: &[u8]) -> Result<(), CoreError> {
    let doc = CustomerDoc::load(bytes, ActorId::from(b"reader".as_slice()))?;
    doc.customer()?;
    Ok(())
}

/// The corpus of the checkout under test. Read at run time: a target directory
/// shared between checkouts may hold a test binary built from another one.
fn crashers_dir() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.join("../../fixtures/crashers")
}

#[test]
fn every_crasher_gives_an_error_never_a_panic() {
    let dir = crashers_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "expected the crasher corpus in {}",
        dir.display()
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| read(&bytes));
        match outcome {
            Err(_) => panic!("{} made the core panic", file.display()),
            Ok(Ok(())) => panic!("{} was read as a valid customer", file.display()),
            Ok(Err(e)) => assert!(!e.to_string().is_empty()),
        }
    }
}

#[test]
fn a_document_from_a_newer_version_names_both_versions() {
    let dir = crashers_dir();
    let bytes = std::fs::read(dir.join("schema-from-the-future.automerge")).unwrap();
    let err = read(&bytes).unwrap_err();
    assert_eq!(
        err,
        CoreError::UnsupportedSchema {
            found: 99,
            supported: 2
        }
    );
    assert!(err.message_ja().contains("99"));
}
