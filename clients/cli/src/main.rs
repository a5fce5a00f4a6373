//! The `callsync` command: customers and calls in a local data directory, and the
//! demo. Every refused action exits non-zero with a one-line reason (and, with
//! `--json`, a typed error object).
//!
//! Owns: argument dispatch, output (text or JSON) and exit codes. Does not own: any
//! rule (the core decides) or storage (the store).

mod app;
mod args;
mod demo;
mod import;
mod online;
mod render;
mod rules;

use callsync_plugin_host::decide::DecideError;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::anyhow;
use callsync_core::{CallId, CustomerId, DeviceKind, EventKind, UserId};
use callsync_store::StoreError;
use clap::Parser;
use serde_json::json;

use app::App;
use args::{CallCommand, Cli, Command, CustomerCommand, Side};

/// What a command prints: text for people, JSON for scripts.
struct Report {
    text: String,
    json: serde_json::Value,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs what it does; one-shot commands only what went wrong.
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(&cli) {
        Ok(Some(report)) => {
            let text = if cli.global.json {
                report.json.to_string()
            } else {
                report.text
            };
            // A reader that went away (`callsync calls | head -1`) is not an error.
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let (code, exit, message_ja) = classify(&e);
            let message = one_line(&e);
            if cli.global.json {
                let error = json!({ "error": { "code": code, "message": message, "message_ja": message_ja } });
                let _ = writeln!(std::io::stdout().lock(), "{error}");
            }
            let line = match message_ja.as_deref() {
                Some(ja) if prefers_japanese() => format!("エラー: {ja}"),
                _ => format!("error: {message}"),
            };
            let _ = writeln!(std::io::stderr().lock(), "{line}");
            ExitCode::from(exit)
        }
    }
}

/// Whether the user's locale is Japanese: the first of `LC_ALL`, `LC_MESSAGES`
/// and `LANG` that is set and not empty starts with `ja` (POSIX's order).
fn prefers_japanese() -> bool {
    ["LC_ALL", "LC_MESSAGES", "LANG"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.is_empty())
        .is_some_and(|value| value.starts_with("ja"))
}

/// The error's stable code, exit status (1: refused, 3: could not run) and
/// Japanese text where the core has one.
fn classify(e: &anyhow::Error) -> (String, u8, Option<String>) {
    use callsync_replica::ClientError;
    for cause in e.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            let (code, exit, ja): (String, u8, Option<String>) = match client {
                ClientError::Refused(body) => (body.code.clone(), 1, Some(body.message_ja.clone())),
                ClientError::NotLoggedIn => (
                    "not-logged-in".into(),
                    1,
                    Some("先にログインしてください".into()),
                ),
                ClientError::Net(_) => (
                    "unreachable".into(),
                    2,
                    Some("サーバーに接続できません".into()),
                ),
                ClientError::Protocol(_) => ("protocol-error".into(), 3, None),
                ClientError::Core(core) => (core.code().into(), 1, Some(core.message_ja())),
                ClientError::Storage(callsync_session::storage::StorageError::Refused(refusal)) => {
                    let body = refusal.body();
                    (body.code, 1, Some(body.message_ja))
                }
                ClientError::Store(_) | ClientError::Storage(_) => {
                    ("database-error".into(), 3, None)
                }
            };
            return (code, exit, ja);
        }
        if let Some(DecideError::Refused(refusal)) = cause.downcast_ref::<DecideError>() {
            // The plugin's own code: the result form shows its words.
            return (refusal.code.clone(), 1, Some(refusal.message_ja.clone()));
        }
        if let Some(server) = cause.downcast_ref::<callsync_server::ServerError>() {
            return match server {
                callsync_server::ServerError::AlreadyInitialized => {
                    ("already-initialized".into(), 1, None)
                }
                callsync_server::ServerError::Invalid(_) => ("bad-request".into(), 1, None),
                _ => ("server-error".into(), 3, None),
            };
        }
    }
    let (code, exit, ja) = classify_local(e);
    (code.to_owned(), exit, ja)
}

fn classify_local(e: &anyhow::Error) -> (&'static str, u8, Option<String>) {
    if let Some(core) = app::core_error(e) {
        return (core.code(), 1, Some(core.message_ja()));
    }
    for cause in e.chain() {
        if let Some(store) = cause.downcast_ref::<StoreError>() {
            return match store {
                StoreError::Core(core) => (core.code(), 1, Some(core.message_ja())),
                StoreError::UnknownCustomer { customer, .. } => (
                    "unknown-customer",
                    1,
                    Some(format!("顧客 {customer} は存在しません")),
                ),
                StoreError::UnknownCall { call, .. } => (
                    "unknown-call",
                    1,
                    Some(format!("コール {call} は存在しません")),
                ),
                StoreError::CustomerExists { customer } => (
                    "customer-exists",
                    1,
                    Some(format!("顧客 {customer} はすでに存在します")),
                ),
                StoreError::CallOnAnotherCustomer { .. } => ("call-on-another-customer", 1, None),
                StoreError::SchemaTooNew { .. } => ("database-too-new", 3, None),
                StoreError::Corrupt(_) => ("database-corrupt", 3, None),
                StoreError::TenantExists { .. } => ("tenant-exists", 1, None),
                StoreError::UnknownTenant { .. } => ("unknown-tenant", 1, None),
                StoreError::MemberExists { .. } => ("member-exists", 1, None),
                StoreError::UnknownMember { .. } => ("unknown-member", 1, None),
                StoreError::LastOwner => ("last-owner", 1, None),
                StoreError::DeviceTaken { .. } => ("device-taken", 1, None),
                StoreError::ActorTaken { .. } => ("actor-taken", 1, None),
                StoreError::DocumentTooLarge { .. } => ("document-too-large", 1, None),
                StoreError::Sqlite(_) => ("database-error", 3, None),
            };
        }
        if let Some(import) = cause.downcast_ref::<import::ImportError>() {
            return match import {
                import::ImportError::Unreadable { .. } => ("unreadable-file", 1, None),
                _ => ("bad-import", 1, None),
            };
        }
        if let Some(e) = cause.downcast_ref::<callsync_core::id::IdError>() {
            return ("bad-id", 1, Some(e.message_ja()));
        }
        if let Some(e) = cause.downcast_ref::<callsync_core::phone_number::PhoneNumberError>() {
            return (
                "bad-phone-number",
                1,
                Some(format!("「{}」は日本の電話番号ではありません", e.written)),
            );
        }
        if let Some(e) = cause.downcast_ref::<app::InputError>() {
            return match e {
                app::InputError::BadTime { .. } => (
                    "bad-time",
                    1,
                    Some("日時を読み取れません（例: 2026-11-25 10:00）".into()),
                ),
                app::InputError::UnknownTimeZone(_) => ("bad-time-zone", 1, None),
                app::InputError::ServerOwnsCustomers => ("server-owns-customers", 1, None),
                app::InputError::NoPhone => (
                    "no-phone",
                    1,
                    Some("携帯端末がまだログインしていません".into()),
                ),
                app::InputError::SeveralPhones => (
                    "several-phones",
                    1,
                    Some("携帯端末が複数あります。--origin で選んでください".into()),
                ),
                app::InputError::CallNeverTookPlace => ("call-never-started", 1, None),
            };
        }
        if let Some(e) = cause.downcast_ref::<DecideError>() {
            let code = match e {
                DecideError::Refused(_) => "pick-refused",
                DecideError::NoRules => "no-rules",
                DecideError::UnknownResultType(_) => "unknown-result-type",
                DecideError::Config(core) => core.code(),
            };
            return (code, 1, Some(e.message_ja()));
        }
        if let Some(e) = cause.downcast_ref::<callsync_plugin_host::install::InstallError>() {
            return (e.code(), 1, None);
        }
        if let Some(e) = cause.downcast_ref::<callsync_core::tenant_config::InstallRequestError>() {
            return (e.code(), 1, Some(e.message_ja()));
        }
    }
    ("error", 3, None)
}

fn one_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    text.lines().collect::<Vec<_>>().join(" ")
}

fn run(cli: &Cli) -> anyhow::Result<Option<Report>> {
    let g = &cli.global;
    callsync_replica::clock::set_skew_ms(g.clock_skew_secs.saturating_mul(1000));
    let data = g.data.clone().unwrap_or_else(app::default_data_dir);
    if let Command::Demo = cli.command {
        let data = match &g.data {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("callsync-demo-{}", std::process::id())),
        };
        demo::run(g, &data)?;
        return Ok(None);
    }
    match &cli.command {
        Command::Serve(args) => return online::serve(g, &data, args).map(|()| None),
        Command::Phone(cmd) if online::phone_is_online(cmd) => {
            return online::phone(g, &data, cmd).map(Some);
        }
        Command::Desk(cmd) => return online::desk(g, &data, cmd).map(Some),
        Command::Admin(cmd) => return online::admin(g, &data, cmd).map(Some),
        Command::AddTenant { owner } => return online::add_tenant_cmd(g, &data, owner).map(Some),
        _ => {}
    }
    let mut app = App::open(g, &data)?;
    let report = match &cli.command {
        Command::Phone(cmd) => online::phone_local(&mut app, cmd)?,
        Command::Customer(cmd) => customer(&mut app, cmd)?,
        Command::Call(cmd) => call(&mut app, cmd)?,
        Command::Calls {
            customer,
            of_user,
            pending,
        } => {
            let customer = customer.as_deref().map(CustomerId::new).transpose()?;
            let user = of_user.as_deref().map(UserId::new).transpose()?;
            let mut rows = app
                .store
                .calls(&app.tenant, customer.as_ref(), user.as_ref())?;
            if *pending {
                rows.retain(|r| r.phase.result_due());
            }
            let json = json!(
                rows.iter()
                    .map(|r| json!({
                        "call": r.call, "customer": r.customer, "user": r.user,
                        "phase": r.phase, "requested_at": r.requested_at,
                    }))
                    .collect::<Vec<_>>()
            );
            Report {
                text: render::call_rows(&app, &rows),
                json,
            }
        }
        Command::Timeline { customer } => {
            let entries = app.load(&CustomerId::new(customer)?)?.timeline();
            Report {
                text: render::timeline(&app, &entries),
                json: serde_json::to_value(&entries)?,
            }
        }
        Command::Demo
        | Command::Serve(_)
        | Command::Desk(_)
        | Command::Admin(_)
        | Command::AddTenant { .. } => {
            return Err(anyhow!("unreachable: handled above"));
        }
    };
    Ok(Some(report))
}

fn customer(app: &mut App, cmd: &CustomerCommand) -> anyhow::Result<Report> {
    Ok(match cmd {
        CustomerCommand::Create {
            id,
            company,
            contact,
            owner,
            phones,
        } => {
            let new = app.new_customer(id, company, contact, owner.as_deref(), phones)?;
            app.create_customers(std::slice::from_ref(&new))?;
            let c = app.load(&new.id)?.customer()?;
            Report {
                text: format!("created {}", render::customer(app, &c)),
                json: serde_json::to_value(&c)?,
            }
        }
        CustomerCommand::List => {
            let rows = app.store.customers(&app.tenant)?;
            let json = json!(rows.iter().map(|r| json!({
                "id": r.id, "company": r.company, "contact": r.contact, "owner": r.owner, "status": r.status,
            })).collect::<Vec<_>>());
            Report {
                text: render::customer_rows(&rows),
                json,
            }
        }
        CustomerCommand::Show { id } => {
            let c = app.load(&CustomerId::new(id)?)?.customer()?;
            Report {
                text: render::customer(app, &c),
                json: serde_json::to_value(&c)?,
            }
        }
        CustomerCommand::Import { file } => {
            let customers = import::read_customers(file, &app.tenant, app.now)?;
            app.create_customers(&customers)?;
            Report {
                text: format!(
                    "imported {} customer(s) from {}",
                    customers.len(),
                    file.display()
                ),
                json: json!({ "imported": customers.len() }),
            }
        }
    })
}

fn call(app: &mut App, cmd: &CallCommand) -> anyhow::Result<Report> {
    let view = match cmd {
        CallCommand::Request {
            customer,
            number,
            origin,
            no_recording,
        } => app.request(customer, number, origin.as_deref(), !no_recording)?,
        CallCommand::Start { call } => {
            app.act_on_call(call, DeviceKind::Phone, EventKind::Started)?
        }
        CallCommand::Cancel { call } => {
            app.act_on_call(call, DeviceKind::Desk, EventKind::Cancelled)?
        }
        CallCommand::End {
            call,
            side: Side::Phone,
            duration,
        } => app.act_on_call(
            call,
            DeviceKind::Phone,
            EventKind::PhoneEnded {
                duration_secs: *duration,
            },
        )?,
        CallCommand::End {
            call,
            side: Side::Browser,
            ..
        } => app.act_on_call(call, DeviceKind::Desk, EventKind::BrowserEnded)?,
        CallCommand::Result { call, result } => app.save_result(call, result)?,
        CallCommand::Manual {
            customer,
            number,
            result,
        } => app.manual_call(customer, number, result)?,
        CallCommand::Show { call } => {
            let call = CallId::new(call)?;
            let customer = app.store.customer_of_call(&app.tenant, &call)?;
            app.load(&customer)?
                .call(&call)
                .ok_or_else(|| StoreError::UnknownCall {
                    tenant: app.tenant.clone(),
                    call: call.clone(),
                })?
        }
        CallCommand::ExpireDue => {
            let expired = app.expire_due()?;
            let text = expired
                .iter()
                .map(|c| render::call_line(app, c))
                .collect::<Vec<_>>()
                .join("\n");
            return Ok(Report {
                text: format!(
                    "{text}{}{} call(s) expired",
                    if text.is_empty() { "" } else { "\n" },
                    expired.len()
                ),
                json: serde_json::to_value(&expired)?,
            });
        }
        CallCommand::Types => {
            let types = app.catalog.types();
            let text = types
                .iter()
                .map(|t| {
                    let options: Vec<&str> = t.options.iter().map(|o| o.as_str()).collect();
                    format!(
                        "{}  {} / {}  options: {}",
                        t.id,
                        t.label_ja,
                        t.label_en,
                        options.join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            return Ok(Report {
                text,
                json: serde_json::to_value(types)?,
            });
        }
    };
    Ok(Report {
        text: render::call(app, &view),
        json: serde_json::to_value(&view)?,
    })
}
