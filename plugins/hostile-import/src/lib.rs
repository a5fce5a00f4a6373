//! A complete `callsync:rules@1.0.0` plugin that also imports
//! `wasi:cli/environment` and reads the host's environment in `evaluate`. The host
//! must refuse it at install: a plugin imports nothing. Never ship it.

#![allow(missing_docs)]

#[cfg(target_arch = "wasm32")]
mod plugin {
    wit_bindgen::generate!({
        path: ["../wit", "wit/wasi-environment.wit", "wit/hostile.wit"],
        world: "callsync:hostile/plugin-with-import",
        generate_all,
    });

    use exports::callsync::rules::result_rules::*;

    struct ReadsEnvironment;

    impl Guest for ReadsEnvironment {
        fn describe(_settings: Vec<Setting>) -> Result<PluginInfo, Refusal> {
            Ok(PluginInfo {
                id: "reads-environment".to_owned(),
                version: "1.0.0".to_owned(),
                result_types: vec![ResultType {
                    id: "no-answer".to_owned(),
                    label_ja: "不在".to_owned(),
                    label_en: "No answer".to_owned(),
                    options: vec![OptionKind::None],
                    time_entry: TimeEntry::Computed,
                    default_status: None,
                    reached_person: false,
                }],
            })
        }

        fn validate(_pick: Pick, _context: Context) -> Result<(), Refusal> {
            Ok(())
        }

        fn evaluate(_pick: Pick, _context: Context) -> Decision {
            let leaked = wasi::cli::environment::get_environment().len();
            Decision {
                option: OptionKind::None,
                at: None,
                customer_status: None,
                reason: format!("read {leaked} environment variables"),
            }
        }
    }

    export!(ReadsEnvironment);
}
