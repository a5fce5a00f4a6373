//! Hostile plugins, built from `plugins/hostile*` and `plugins/api-v2`: each is
//! refused at install or contained at run time with a typed error naming the
//! plugin, and the next good call on the same plugin works.

use std::time::{Duration, Instant};

use callsync_core::plugin::InvalidAnswer;
use callsync_core::result_type::{OptionKind, ResultOption};
use callsync_plugin_host::{Failure, Limits, PluginError, PluginHost};
use callsync_shipped_plugins::{STANDARD, hostile};

use crate::support::*;

fn inspect(
    host: &PluginHost,
    file: &[u8],
    settings_in: &[(&str, &str)],
) -> Result<(), PluginError> {
    inspect_in_tokyo(host, file, &settings(settings_in)).map(|_| ())
}

fn failure(err: PluginError) -> (String, &'static str, Failure) {
    match err {
        PluginError::Failed {
            plugin,
            function,
            failure,
        } => (plugin, function, failure),
        other => panic!("expected a failed call, got {other:?}"),
    }
}

#[test]
fn misbehaving_evaluations_are_contained_and_the_next_call_works() {
    let (_host, plugin, info) = installed(hostile::MISBEHAVES, &[]);
    let ended = tokyo("2026-11-24 10:00");
    let inputs = inputs(
        chrono_tz::Asia::Tokyo,
        ended,
        ended.plus_millis(60_000),
        &[],
    );
    let spec = spec(&info, "no-answer");
    let limits = Limits::default();
    let good = pick("no-answer", OptionKind::None, None);
    type Expected = fn(&Failure) -> bool;
    let cases: [(&str, Expected); 5] = [
        ("loop", |f| *f == Failure::OutOfFuel(Limits::default().fuel)),
        ("memory-bomb", |f| {
            *f == Failure::OutOfMemory(Limits::default().memory_bytes)
        }),
        (
            "panic",
            |f| matches!(f, Failure::Trapped(text) if text.contains("unreachable")),
        ),
        ("recursion", |f| *f == Failure::StackOverflow),
        ("garbage", |f| {
            matches!(f, Failure::InvalidAnswer(InvalidAnswer::BadTime { .. }))
        }),
    ];
    for (behaviour, expected) in cases {
        let started = Instant::now();
        let err = plugin
            .evaluate(&with_status(good.clone(), behaviour), &inputs, spec)
            .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            err.to_string().contains("hostile@1.0.0"),
            "{behaviour}: {err}"
        );
        let (name, function, failure) = failure(err);
        assert_eq!((name.as_str(), function), ("hostile@1.0.0", "evaluate"));
        assert!(expected(&failure), "{behaviour}: {failure:?}");
        assert!(
            elapsed < limits.deadline * 4,
            "{behaviour} took {elapsed:?}"
        );
        // The host keeps serving, and the plugin's next call starts clean.
        let decision = plugin.evaluate(&good, &inputs, spec).unwrap();
        assert_eq!(decision.option, ResultOption::None, "after {behaviour}");
    }
}

#[test]
fn misbehaving_at_install_is_refused() {
    let host = shared_host();
    for (behaviour, code) in [
        ("loop", "plugin-out-of-fuel"),
        ("memory-bomb", "plugin-out-of-memory"),
        ("panic", "plugin-trapped"),
        ("recursion", "plugin-stack-overflow"),
        ("garbage", "plugin-invalid-answer"),
    ] {
        let err = inspect(host, hostile::MISBEHAVES, &[("describe", behaviour)]).unwrap_err();
        assert_eq!(err.code(), code, "{behaviour}: {err}");
    }
    // Still serving: a good plugin installs on the same host.
    inspect(host, STANDARD, &[]).unwrap();
    // A refused build is not kept loaded.
    let fresh = crate::support::host();
    inspect(&fresh, hostile::MISBEHAVES, &[("describe", "panic")]).unwrap_err();
    let component = callsync_plugin_host::to_component(hostile::MISBEHAVES, 1 << 22).unwrap();
    assert!(
        fresh
            .loaded(&callsync_plugin_host::content_hash(&component))
            .is_none()
    );
}

#[test]
fn the_wall_clock_deadline_stops_what_fuel_would_not() {
    let limits = Limits {
        fuel: u64::MAX / 2,
        deadline: Duration::from_millis(50),
        ..Limits::default()
    };
    let host = PluginHost::new(limits, None).unwrap();
    let inspected = inspect_in_tokyo(&host, hostile::MISBEHAVES, &[]).unwrap();
    let plugin = host.load(inspected.hash, &inspected.component).unwrap();
    let ended = tokyo("2026-11-24 10:00");
    let inputs = inputs(
        chrono_tz::Asia::Tokyo,
        ended,
        ended.plus_millis(60_000),
        &[],
    );
    let started = Instant::now();
    let err = plugin
        .evaluate(
            &with_status(pick("no-answer", OptionKind::None, None), "loop"),
            &inputs,
            spec(&inspected.info, "no-answer"),
        )
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(failure(err).2, Failure::Deadline(50));
    assert!(
        elapsed >= Duration::from_millis(45) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[test]
fn a_module_importing_wasi_is_refused_and_named() {
    let err = inspect(&host(), hostile::IMPORTS_WASI, &[]).unwrap_err();
    assert_eq!(
        err,
        PluginError::Imports(vec!["wasi_snapshot_preview1::fd_write".to_owned()])
    );
    assert_eq!(err.code(), "plugin-imports");
}

#[test]
fn a_component_importing_the_environment_is_refused() {
    // As a module: its import is named before wrapping.
    let err = inspect(&host(), hostile::IMPORTS_ENVIRONMENT, &[]).unwrap_err();
    assert!(
        matches!(&err, PluginError::Imports(names) if names.iter().any(|n| n.contains("wasi:cli/environment"))),
        "{err:?}"
    );
    // Wrapped into a component by its author first: the component's import is refused.
    let component = wit_component::ComponentEncoder::default()
        .module(hostile::IMPORTS_ENVIRONMENT)
        .unwrap()
        .encode()
        .unwrap();
    let err = inspect(&host(), &component, &[]).unwrap_err();
    assert_eq!(
        err,
        PluginError::Imports(vec!["wasi:cli/environment@0.2.0".to_owned()])
    );
}

#[test]
fn a_plugin_for_another_api_version_is_refused_with_the_supported_ones() {
    let err = inspect(&host(), hostile::API_V2, &[]).unwrap_err();
    assert_eq!(
        err,
        PluginError::UnsupportedApi {
            found: "2.0.0".to_owned()
        }
    );
    assert_eq!(
        err.to_string(),
        "built for plugin API 2.0.0; this engine supports 1.0.0"
    );
}

#[test]
fn files_that_are_not_plugins_are_refused() {
    let host = host();
    assert_eq!(inspect(&host, b"", &[]).unwrap_err(), PluginError::NotWasm);
    assert_eq!(
        inspect(&host, b"#!/bin/sh\necho hi\n", &[]).unwrap_err(),
        PluginError::NotWasm
    );
    assert_eq!(
        inspect(&host, &STANDARD[..6], &[]).unwrap_err(),
        PluginError::NotWasm
    );
    let truncated = inspect(&host, &STANDARD[..STANDARD.len() / 2], &[]).unwrap_err();
    assert_eq!(truncated.code(), "plugin-invalid", "{truncated}");
    let small = PluginHost::new(
        Limits {
            max_file_bytes: 1024,
            ..Limits::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(
        inspect(&small, STANDARD, &[]).unwrap_err(),
        PluginError::TooLarge {
            size: STANDARD.len(),
            max: 1024
        }
    );
}
