//! A plugin that misbehaves on purpose, for the host's containment tests.
//!
//! It is the standard plugin until asked to misbehave: a pick whose customer status
//! names a behaviour (`loop`, `memory-bomb`, `panic`, `recursion`, `garbage`)
//! triggers it in `evaluate`, and the setting `describe=<behaviour>` triggers it at
//! install. Never ship it.

use callsync_plugin_sdk::*;

/// The plugin.
pub struct Hostile;

fn misbehave(behaviour: &str) {
    match behaviour {
        "loop" => {
            let mut spins = 0u64;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        "memory-bomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "panic" => panic!("hostile plugin panics on purpose"),
        "recursion" => {
            std::hint::black_box(recurse(std::hint::black_box(u64::MAX)));
        }
        _ => {}
    }
}

fn recurse(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    std::hint::black_box(recurse(depth - 1)).wrapping_add(depth)
}

impl Rules for Hostile {
    fn describe(settings: Vec<Setting>) -> Result<PluginInfo, Refusal> {
        let behaviour = setting(&settings, "describe")
            .unwrap_or_default()
            .to_owned();
        misbehave(&behaviour);
        let mut types = standard_result_types();
        if behaviour == "garbage" {
            // Two types with one id, and an id that is not one.
            types.push(types[0].clone());
            types[1].id = "Not An Id!".to_owned();
        }
        Ok(PluginInfo::new("hostile", env!("CARGO_PKG_VERSION"), types))
    }

    fn validate(pick: Pick, context: Context) -> Result<(), Refusal> {
        check_pick(&standard_result_types(), &pick, &context)
    }

    fn evaluate(pick: Pick, context: Context) -> Decision {
        let behaviour = pick.customer_status.clone().unwrap_or_default();
        misbehave(&behaviour);
        if behaviour == "garbage" {
            // A recall one millisecond off the step, before the save.
            return Decision::recall(context.saved_at - 1, None, "garbage");
        }
        Decision::as_picked(&standard_result_types(), &pick, "as picked")
    }
}

export_plugin!(Hostile);
