//! A plugin that calls WASI (`fd_write`) from `evaluate`: its core module imports
//! `wasi_snapshot_preview1`, which a plugin may not. The host must refuse it at
//! install. Never ship it.

use callsync_plugin_sdk::*;

/// The plugin.
pub struct WritesToStdout;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn fd_write(fd: i32, iovs: *const u32, iovs_len: i32, written: *mut u32) -> i32;
}

fn say(message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        let iov = [message.as_ptr() as u32, message.len() as u32];
        let mut written = 0u32;
        // SAFETY: `iov` describes `message`, which outlives the call.
        unsafe {
            fd_write(1, iov.as_ptr(), 1, &mut written);
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = message;
}

impl Rules for WritesToStdout {
    fn describe(_settings: Vec<Setting>) -> Result<PluginInfo, Refusal> {
        Ok(PluginInfo::new(
            "writes-to-stdout",
            env!("CARGO_PKG_VERSION"),
            standard_result_types(),
        ))
    }

    fn validate(pick: Pick, context: Context) -> Result<(), Refusal> {
        check_pick(&standard_result_types(), &pick, &context)
    }

    fn evaluate(pick: Pick, _context: Context) -> Decision {
        say("evaluating\n");
        Decision::as_picked(&standard_result_types(), &pick, "as picked")
    }
}

export_plugin!(WritesToStdout);
