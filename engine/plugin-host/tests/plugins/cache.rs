//! The compiled-plugin cache: a second host loads from disk without compiling, and
//! a damaged cache file is recompiled, never trusted.

use callsync_core::result_type::OptionKind;
use callsync_plugin_host::{Limits, PluginHost};
use callsync_shipped_plugins::STANDARD;

use crate::support::*;

#[test]
fn a_second_host_loads_from_disk_and_a_damaged_file_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let first = PluginHost::new(Limits::default(), Some(dir.path())).unwrap();
    let inspected = inspect_in_tokyo(&first, STANDARD, &[]).unwrap();
    let cached = dir.path().join(format!("{}.cwasm", inspected.hash));
    assert!(cached.exists());
    assert_eq!(first.compiles(), 1);
    let written = std::fs::read(&cached).unwrap();

    let ended = tokyo("2026-11-24 10:00");
    let inputs = inputs(
        chrono_tz::Asia::Tokyo,
        ended,
        ended.plus_millis(60_000),
        &[],
    );
    let pick = pick("no-answer", OptionKind::Recall, None);
    let spec = spec(&inspected.info, "no-answer");

    let second = PluginHost::new(Limits::default(), Some(dir.path())).unwrap();
    let plugin = second.load(inspected.hash, &inspected.component).unwrap();
    let expected = plugin.evaluate(&pick, &inputs, spec).unwrap();
    assert_eq!(second.compiles(), 0, "loaded from disk, not compiled");
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        written,
        "the file was kept"
    );
    // Inspecting the same file again (a reinstall) finds it on disk too.
    let again = PluginHost::new(Limits::default(), Some(dir.path())).unwrap();
    inspect_in_tokyo(&again, STANDARD, &[]).unwrap();
    assert_eq!(again.compiles(), 0);

    // Flip one byte in the middle of the compiled code.
    let mut bytes = std::fs::read(&cached).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&cached, &bytes).unwrap();
    let third = PluginHost::new(Limits::default(), Some(dir.path())).unwrap();
    let plugin = third.load(inspected.hash, &inspected.component).unwrap();
    assert_eq!(plugin.evaluate(&pick, &inputs, spec).unwrap(), expected);
    assert_eq!(third.compiles(), 1, "the damaged file was not trusted");
    assert_ne!(
        std::fs::read(&cached).unwrap(),
        bytes,
        "the damaged file was replaced"
    );
}

#[test]
fn a_component_that_does_not_match_its_hash_is_refused() {
    let host = PluginHost::new(Limits::default(), None).unwrap();
    let inspected = inspect_in_tokyo(&host, STANDARD, &[]).unwrap();
    let other = PluginHost::new(Limits::default(), None).unwrap();
    let mut component = inspected.component.clone();
    component.push(0);
    let err = other.load(inspected.hash, &component).unwrap_err();
    assert_eq!(err.code(), "plugin-invalid", "{err}");
}
