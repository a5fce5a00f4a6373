//! Every refusal path of the binary: exit 1, a one-line reason, a typed JSON error,
//! and not one byte of data changed.

use crate::support::{DataDir, fixtures};

fn at(secs: u32) -> String {
    format!("2026-11-24T11:{:02}:{:02}+09:00", secs / 60, secs % 60)
}

fn imported() -> DataDir {
    let data = DataDir::new();
    let csv = fixtures().join("customers.csv");
    data.run_at(&at(0), &["customer", "import", csv.to_str().unwrap()])
        .ok();
    data
}

/// Runs `args` at `now` and asserts it is refused with `code` and changes nothing.
fn refused_without_change(data: &DataDir, now: &str, args: &[&str], code: &str) -> String {
    let before = data.fingerprint();
    let message = data.run_at(now, args).refused(code);
    assert_eq!(data.fingerprint(), before, "{args:?} changed the database");
    message
}

/// A call on cus-0001 taken to `awaiting-result`.
fn ended_call(data: &DataDir) -> String {
    let id = requested(data);
    data.run_at(&at(2), &["call", "start", &id]).ok();
    data.run_at(
        &at(30),
        &["call", "end", &id, "--side", "phone", "--duration", "28"],
    )
    .ok();
    id
}

/// A call on cus-0001 requested at second 1 (waiting for Start call).
fn requested(data: &DataDir) -> String {
    let call = data
        .run_at(
            &at(1),
            &["call", "request", "cus-0001", "--number", "03-6587-6723"],
        )
        .ok();
    call["call"].as_str().unwrap().to_owned()
}

/// A call on cus-0001 ended on both sides: its result is due.
fn awaiting_result(data: &DataDir) -> String {
    let id = ended_call(data);
    data.run_at(&at(31), &["call", "end", &id, "--side", "browser"])
        .ok();
    id
}

#[test]
fn an_unknown_customer_or_call_is_refused() {
    let data = imported();
    refused_without_change(
        &data,
        &at(1),
        &["call", "request", "cus-9999", "--number", "03-1234-5678"],
        "unknown-customer",
    );
    refused_without_change(
        &data,
        &at(1),
        &["customer", "show", "cus-9999"],
        "unknown-customer",
    );
    refused_without_change(
        &data,
        &at(1),
        &["call", "start", "call-nope"],
        "unknown-call",
    );
    refused_without_change(&data, &at(1), &["customer", "show", "bad/id"], "bad-id");
}

#[test]
fn a_number_that_is_not_the_customers_or_not_a_number_is_refused() {
    let data = imported();
    refused_without_change(
        &data,
        &at(1),
        &["call", "request", "cus-0001", "--number", "03-0000-0000"],
        "number-not-on-customer",
    );
    refused_without_change(
        &data,
        &at(1),
        &["call", "request", "cus-0001", "--number", "12-34"],
        "bad-phone-number",
    );
}

#[test]
fn a_result_before_the_browser_ends_the_call_is_refused() {
    let data = imported();
    let id = ended_call(&data);
    let msg = refused_without_change(
        &data,
        &at(31),
        &["call", "result", &id, "--type", "no-answer"],
        "result-before-browser-ended",
    );
    assert!(msg.contains("browser"), "{msg}");
}

#[test]
fn option_times_off_the_five_minute_step_or_in_the_past_are_refused() {
    let data = imported();
    let id = awaiting_result(&data);
    let result = |time: &str| {
        vec![
            "call",
            "result",
            &id,
            "--type",
            "no-answer",
            "--recall",
            time,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let args = result("2026-11-25 10:03");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_without_change(&data, &at(32), &args, "option-time-not-on-step");
    let args = result("2026-11-24 09:00");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_without_change(&data, &at(32), &args, "option-time-in-past");
    let args = result("tomorrow-ish");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_without_change(&data, &at(32), &args, "bad-time");
    refused_without_change(
        &data,
        &at(32),
        &["call", "result", &id, "--type", "no-such-type"],
        "unknown-result-type",
    );
    refused_without_change(
        &data,
        &at(32),
        &[
            "call",
            "result",
            &id,
            "--type",
            "do-not-call",
            "--recall",
            "2026-11-25 10:00",
        ],
        "option-not-allowed",
    );
    // And the correct form goes through.
    data.run_at(
        &at(33),
        &[
            "call",
            "result",
            &id,
            "--type",
            "no-answer",
            "--recall",
            "2026-11-25 10:05",
        ],
    )
    .ok();
}

#[test]
fn a_new_request_with_a_result_pending_is_refused_on_any_customer() {
    let data = imported();
    let id = awaiting_result(&data);
    let msg = refused_without_change(
        &data,
        &at(40),
        &["call", "request", "cus-0002", "--number", "022-212-4471"],
        "pending-result",
    );
    assert!(msg.contains(&id), "{msg}");
    // The Japanese text is there for the UI.
    let json = data
        .run_at(
            &at(40),
            &["call", "request", "cus-0002", "--number", "022-212-4471"],
        )
        .json();
    assert!(
        json["error"]["message_ja"]
            .as_str()
            .unwrap()
            .contains("コール結果を保存"),
        "{json}"
    );
    // Another rep is not blocked by this rep's pending result.
    data.run_at(
        &at(41),
        &[
            "--user",
            "rep2@sakura-sales.example",
            "call",
            "request",
            "cus-0002",
            "--number",
            "022-212-4471",
        ],
    )
    .ok();
}

#[test]
fn a_request_during_a_call_restriction_is_refused_until_it_ends() {
    let data = imported();
    let id = awaiting_result(&data);
    data.run_at(
        &at(32),
        &[
            "call",
            "result",
            &id,
            "--type",
            "do-not-call",
            "--restrict-until",
            "2026-12-01 09:00",
        ],
    )
    .ok();
    let msg = refused_without_change(
        &data,
        &at(40),
        &["call", "request", "cus-0001", "--number", "080-2618-2246"],
        "customer-restricted",
    );
    assert!(msg.contains("2026-12-01T00:00:00Z"), "{msg}");
    data.run_at(
        "2026-12-01T09:00:00+09:00",
        &["call", "request", "cus-0001", "--number", "080-2618-2246"],
    )
    .ok();
}

#[test]
fn a_result_for_a_call_that_never_started_is_refused() {
    let data = imported();
    let id = requested(&data);
    data.run_at(&at(2), &["call", "cancel", &id]).ok();
    refused_without_change(
        &data,
        &at(3),
        &["call", "result", &id, "--type", "no-answer"],
        "call-never-started",
    );
    refused_without_change(
        &data,
        &at(3),
        &["call", "end", &id, "--side", "browser"],
        "not-started",
    );
}

#[test]
fn only_the_origin_phone_may_start_the_call() {
    let data = imported();
    let id = requested(&data);
    refused_without_change(
        &data,
        &at(2),
        &["--phone", "phone-2", "call", "start", &id],
        "not-origin-phone",
    );
}

#[test]
fn creating_a_customer_twice_or_without_a_valid_phone_is_refused() {
    let data = imported();
    let create = |id: &str, phone: &str| {
        vec![
            "customer",
            "create",
            "--id",
            id,
            "--company",
            "株式会社テスト",
            "--contact",
            "山田 太郎",
            "--number",
            phone,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let args = create("cus-0001", "03-1111-2222");
    refused_without_change(
        &data,
        &at(1),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "customer-exists",
    );
    let args = create("cus-0100", "代表:1234");
    refused_without_change(
        &data,
        &at(1),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "bad-phone-number",
    );
    let args = create("cus-0100", "03-1111-2222");
    let created = data
        .run_at(&at(2), &args.iter().map(String::as_str).collect::<Vec<_>>())
        .ok();
    assert_eq!(created["status"], "未対応");
}

#[test]
fn a_refused_flag_creates_nothing_on_disk() {
    let data = DataDir::new();
    let fresh = data.path().join("never-created");
    let out = std::process::Command::new(crate::support::callsync_bin())
        .args([
            "--json",
            "--tz",
            "Mars/Olympus_Mons",
            "--data",
            fresh.to_str().unwrap(),
            "customer",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["error"]["code"], "bad-time-zone");
    assert!(
        !fresh.exists(),
        "a refused command must not create the data directory"
    );
}

/// `callsync ARGS…` with no data directory or environment of its own.
fn bare(args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::support::callsync_bin())
        .args(args)
        .env_remove("CALLSYNC_USER")
        .env_remove("CALLSYNC_TENANT")
        .output()
        .unwrap()
}

#[test]
fn desk_phone_and_admin_commands_list_only_the_flags_that_apply_to_them() {
    let local_only = [
        "--tenant",
        "--user",
        "--desk ",
        "--phone ",
        "--start-limit-secs",
    ];
    for command in [
        &["desk", "customers", "--help"][..],
        &["desk", "request", "--help"],
        &["phone", "run", "--help"],
        &["admin", "users", "--help"],
    ] {
        let out = bare(command);
        assert!(out.status.success(), "{command:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in local_only {
            assert!(!help.contains(flag), "{command:?} lists {flag}:\n{help}");
        }
        assert!(help.contains("--timeout-secs"), "{command:?}:\n{help}");
    }
    // The local mode's flags are still there, before the subcommand.
    let top = String::from_utf8_lossy(&bare(&["--help"]).stdout).into_owned();
    for flag in local_only {
        assert!(top.contains(flag.trim_end()), "{flag}:\n{top}");
    }
    // One given to a session's command is a usage error, not silently ignored.
    let out = bare(&["desk", "customers", "--user", "rep2@sakura-sales.example"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--user"));
}
