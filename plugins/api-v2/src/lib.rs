//! A plugin built for `callsync:rules@2.0.0`, an API version the host does not
//! support: install must refuse it and say which versions it supports.

#![allow(missing_docs)]

#[cfg(target_arch = "wasm32")]
mod plugin {
    wit_bindgen::generate!({ path: "wit", world: "plugin" });

    struct FromTheFuture;

    impl exports::callsync::rules::result_rules::Guest for FromTheFuture {
        fn describe() -> String {
            "from the future".to_owned()
        }
    }

    export!(FromTheFuture);
}
