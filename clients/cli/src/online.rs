//! The commands that talk to a server: `serve`, `phone`, `desk` and `admin`.
//!
//! Owns: turning those commands into server starts, logins, sync sessions and
//! requests, and what they print. A desk command is online: it joins, catches up,
//! acts on the local replica through the same rules as the local commands, then
//! waits until the server has committed the change. A phone's `start`, `end`,
//! `requests`, `show` and `calls` work on its local replica with no connection;
//! `phone run` carries them to the server whenever it can.
//! Does not own: the rules (the core), the protocol or the transport.

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use callsync_core::wire::{self, RpcCall, RpcResult};
use callsync_core::{CallId, CustomerId, DeviceKind, EventKind, Phase, UserId};
use callsync_replica::run::{RunOptions, run};
use callsync_replica::session::{LoginRequest, SavedTrust};
use callsync_replica::{ClientError, ClientEvent, SavedSession, SyncClient, login};
use callsync_server::{Server, ServerConfig, add_tenant, init_owner};
use serde_json::json;

use crate::app::{App, InputError};
use crate::args::{
    AdminCommand, CallCommand, DeskCommand, Global, LoginArgs, NetworkArg, OnOff, PhoneCommand,
    PluginCommand, RecordingCommand, ResultArgs, ServeArgs, Side,
};
use crate::{Report, render};

/// How long an online desk command waits for one step (the whole command is
/// bounded by `--timeout-secs`).
const SETTLE: Duration = Duration::from_secs(30);

/// Runs `work` within the command's time limit; running out is "unreachable".
async fn within<T>(
    g: &Global,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let limit = Duration::from_secs(u64::from(g.timeout_secs));
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Net(callsync_net::NetError::Timeout(limit)).into()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A password from `var`, or else one line of stdin.
fn password(var: &str) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var(var) {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `callsync add-tenant`.
pub(crate) fn add_tenant_cmd(g: &Global, data: &Path, owner: &str) -> anyhow::Result<Report> {
    let password = password("CALLSYNC_PASSWORD")?;
    add_tenant(data, &g.tenant, owner, &password)?;
    Ok(Report {
        text: format!("added tenant {} with owner {owner}", g.tenant),
        json: json!({ "tenant": g.tenant, "owner": owner }),
    })
}

/// `callsync serve`.
pub(crate) fn serve(g: &Global, data: &Path, args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(email) = &args.init_owner {
        let password = password("CALLSYNC_PASSWORD")?;
        match init_owner(data, &g.tenant, email, &password) {
            Ok(()) => {
                tracing::info!(owner = %email, tenant = %g.tenant, "created the first tenant")
            }
            // The same command starts the server again later: bootstrapping is
            // done, so the flag has nothing left to do.
            Err(callsync_server::ServerError::AlreadyInitialized) => {
                tracing::info!("the data directory already has a tenant; --init-owner ignored");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut config = ServerConfig::new(data.to_path_buf(), args.listen);
    config.certificate = args.cert.clone().zip(args.key.clone());
    config.start_limit_ms = i64::from(g.start_limit_secs) * 1000;
    config.session_ttl_ms = i64::from(args.session_hours) * 3600 * 1000;
    config.handshake_timeout = Duration::from_millis(args.handshake_timeout_ms);
    config.max_customers_per_tenant = args.max_customers_per_tenant;
    config.web.page_dir = args.page.clone();
    config.web.listen = args.http;
    config.web.allowed_origins = args.allow_origin.clone();
    if let Some(quota) = args.recording_quota_bytes {
        config.recording_limits.tenant_quota_bytes = quota;
    }
    if let Some(max) = args.max_recording_bytes {
        config.recording_limits.max_bytes = max;
    }
    runtime()?.block_on(async {
        let server = Server::start(config).await?;
        let line = if g.json {
            json!({
                "listening": server.local_addr(),
                "fingerprint": server.fingerprint(),
                "page": server.page_url(),
            })
            .to_string()
        } else {
            format!(
                "callsync server listening on {} (QUIC and WebTransport)\ncertificate fingerprint (SHA-256): {}\nopen the page: {}",
                server.local_addr(),
                server.fingerprint(),
                server.page_url()
            )
        };
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        stop_signal().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}

fn login_request(args: &LoginArgs, kind: DeviceKind) -> anyhow::Result<LoginRequest> {
    let trust = match (&args.fingerprint, &args.ca) {
        (Some(fp), _) => SavedTrust::Fingerprint(fp.trim().to_ascii_lowercase()),
        (None, Some(ca)) => SavedTrust::CaFile(
            std::fs::canonicalize(ca)
                .with_context(|| format!("cannot read {}", ca.display()))?
                .display()
                .to_string(),
        ),
        (None, None) => return Err(anyhow!("give --fingerprint or --ca")),
    };
    Ok(LoginRequest {
        server: args.server,
        server_name: args.server_name.clone(),
        trust,
        email: args.email.clone(),
        password: password("CALLSYNC_PASSWORD")?,
        kind,
        device: args.device_id.clone(),
    })
}

fn logged_in(session: &SavedSession) -> Report {
    Report {
        text: format!(
            "logged in as {} ({}) in {}; this {} is {}",
            session.user,
            session.role,
            session.tenant,
            session.kind.as_str(),
            session.device
        ),
        json: json!({
            "user": session.user, "role": session.role, "tenant": session.tenant,
            "device": session.device, "kind": session.kind, "expires_at": session.expires_at,
        }),
    }
}

/// Whether a phone command needs the network (the others are local).
pub(crate) fn phone_is_online(cmd: &PhoneCommand) -> bool {
    matches!(
        cmd,
        PhoneCommand::Login(_) | PhoneCommand::Run(_) | PhoneCommand::Network { .. }
    )
}

/// `callsync phone login|run`.
pub(crate) fn phone(_g: &Global, data: &Path, cmd: &PhoneCommand) -> anyhow::Result<Report> {
    match cmd {
        PhoneCommand::Login(args) => {
            let request = login_request(args, DeviceKind::Phone)?;
            let session = runtime()?.block_on(login(data, &request))?;
            Ok(logged_in(&session))
        }
        PhoneCommand::Run(args) => {
            if !callsync_replica::capture::SAMPLE_RATES.contains(&args.sample_rate) {
                return Err(anyhow!(
                    "--sample-rate is 8000 or 16000, not {}",
                    args.sample_rate
                ));
            }
            if let Some(kind) = args.network {
                callsync_replica::recorder::set_network_kind(data, network_kind(kind))?;
            }
            let options = RunOptions {
                recorder: callsync_replica::recorder::RecorderOptions {
                    sample_rate: args.sample_rate,
                    audio: match &args.audio {
                        Some(path) => callsync_replica::recorder::Audio::File(path.clone()),
                        None => callsync_replica::recorder::Audio::Tone(440.0),
                    },
                },
                ..RunOptions::default()
            };
            runtime()?.block_on(run(
                data,
                &options,
                |event| {
                    if let Ok(line) = serde_json::to_string(&event) {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                },
                stop_signal(),
            ))?;
            Ok(Report {
                text: "stopped".to_owned(),
                json: json!({ "event": "stopped" }),
            })
        }
        PhoneCommand::Network { kind } => {
            if !data.exists() {
                return Err(ClientError::NotLoggedIn.into());
            }
            let kind = network_kind(*kind);
            callsync_replica::recorder::set_network_kind(data, kind)?;
            Ok(Report {
                text: format!(
                    "network: {}",
                    serde_json::to_value(kind)?.as_str().unwrap_or("")
                ),
                json: json!({ "event": "network", "kind": kind }),
            })
        }
        _ => Err(anyhow!("unreachable: a local phone command")),
    }
}

fn network_kind(arg: NetworkArg) -> callsync_session::device::uploads::NetworkKind {
    use callsync_session::device::uploads::NetworkKind;
    match arg {
        NetworkArg::Wifi => NetworkKind::Wifi,
        NetworkArg::Cellular => NetworkKind::Cellular,
        NetworkArg::Offline => NetworkKind::Offline,
    }
}

/// The phone's local commands: they work on the replica, online or not.
pub(crate) fn phone_local(app: &mut App, cmd: &PhoneCommand) -> anyhow::Result<Report> {
    if app.session.as_ref().map(|s| s.kind) != Some(DeviceKind::Phone) {
        return Err(ClientError::NotLoggedIn.into());
    }
    match cmd {
        PhoneCommand::Start { call: id } => {
            crate::call(app, &CallCommand::Start { call: id.clone() })
        }
        PhoneCommand::End { call: id, duration } => crate::call(
            app,
            &CallCommand::End {
                call: id.clone(),
                side: Side::Phone,
                duration: *duration,
            },
        ),
        PhoneCommand::Result { call: id, result } => {
            let call = CallId::new(id)?;
            let fields = crate::rules::result_fields(app, &call, None, result)?;
            let customer = app.store.customer_of_call(&app.tenant, &call)?;
            let event = app.event(&call, DeviceKind::Phone, EventKind::ResultSaved(fields))?;
            let view = app.act(&customer, vec![event])?;
            Ok(Report {
                text: render::call(app, &view),
                json: serde_json::to_value(&view)?,
            })
        }
        PhoneCommand::Show { call: id } => {
            crate::call(app, &CallCommand::Show { call: id.clone() })
        }
        PhoneCommand::Types => crate::call(app, &CallCommand::Types),
        PhoneCommand::Requests | PhoneCommand::Calls => {
            let waiting_only = matches!(cmd, PhoneCommand::Requests);
            let rows = app.store.calls(&app.tenant, None, None)?;
            let mut views = Vec::new();
            for row in rows {
                if waiting_only && row.phase != Phase::AwaitingStart {
                    continue;
                }
                let doc = app.load(&row.customer)?;
                if let Some(view) = doc.call(&row.call) {
                    let mine = matches!(&view.origin, callsync_core::CallOrigin::Dialed { origin, .. } if origin == &app.phone);
                    let live =
                        !waiting_only || !view.is_past_start_limit(app.now, app.start_limit_ms);
                    if mine && live {
                        views.push(view);
                    }
                }
            }
            let text = if views.is_empty() {
                "no calls".to_owned()
            } else {
                views
                    .iter()
                    .map(|v| render::call_line(app, v))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok(Report {
                text,
                json: serde_json::to_value(&views)?,
            })
        }
        PhoneCommand::Login(_) | PhoneCommand::Run(_) | PhoneCommand::Network { .. } => {
            Err(anyhow!("unreachable: an online phone command"))
        }
    }
}

/// Connects, catches up, runs `body`, waits until the server holds every local
/// change, and leaves.
async fn online<T>(
    data: &Path,
    body: impl AsyncFnOnce(&mut SyncClient) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let (mut client, _) = SyncClient::connect(data).await?;
    let outcome = async {
        client.settle(SETTLE).await?;
        let value = body(&mut client).await?;
        client.push_local().await?;
        // The server may refuse what this command wrote: that is the command's
        // answer, not a success.
        for event in client.settle(SETTLE).await? {
            if let ClientEvent::Rejected {
                code,
                message,
                message_ja,
                ..
            } = event
            {
                return Err(ClientError::Refused(callsync_core::wire::ErrorBody {
                    code,
                    message,
                    message_ja,
                })
                .into());
            }
        }
        anyhow::Ok(value)
    }
    .await;
    client.leave().await;
    outcome
}

fn refused(result: RpcResult) -> anyhow::Result<RpcResult> {
    match result {
        RpcResult::Refused(body) => Err(ClientError::Refused(body).into()),
        other => Ok(other),
    }
}

async fn rpc(client: &mut SyncClient, call: RpcCall) -> anyhow::Result<RpcResult> {
    let (result, _) = client.rpc(call).await?;
    refused(result)
}

/// The only phone of the user, for a request without `--origin`.
async fn only_phone(client: &mut SyncClient) -> anyhow::Result<String> {
    let RpcResult::Devices(devices) = rpc(client, RpcCall::Devices).await? else {
        return Err(anyhow!("the server answered 'devices' with something else"));
    };
    let phones: Vec<_> = devices
        .iter()
        .filter(|d| d.kind == DeviceKind::Phone)
        .collect();
    match phones.as_slice() {
        [one] => Ok(one.id.to_string()),
        [] => Err(InputError::NoPhone.into()),
        _ => Err(InputError::SeveralPhones.into()),
    }
}

/// Makes sure the desk holds the customer's document.
async fn hold(client: &mut SyncClient, app: &App, customer: &str) -> anyhow::Result<()> {
    let id = CustomerId::new(customer)?;
    if app.load(&id).is_err() {
        rpc(
            client,
            RpcCall::Subscribe {
                documents: vec![id.clone()],
            },
        )
        .await?;
        client.settle(SETTLE).await?;
        if app.load(&id).is_err() {
            return Err(callsync_store::StoreError::UnknownCustomer {
                tenant: app.tenant.clone(),
                customer: id,
            }
            .into());
        }
    }
    Ok(())
}

/// `callsync desk …`.
pub(crate) fn desk(g: &Global, data: &Path, cmd: &DeskCommand) -> anyhow::Result<Report> {
    if let DeskCommand::Login(args) = cmd {
        let request = login_request(args, DeviceKind::Desk)?;
        let session = runtime()?.block_on(login(data, &request))?;
        return Ok(logged_in(&session));
    }
    if !data.exists() {
        return Err(ClientError::NotLoggedIn.into());
    }
    let mut app = App::open(g, data)?;
    if app.session.as_ref().map(|s| s.kind) != Some(DeviceKind::Desk) {
        return Err(ClientError::NotLoggedIn.into());
    }
    let rt = runtime()?;
    rt.block_on(within(
        g,
        online(data, async |client: &mut SyncClient| {
            // The configuration may have arrived with this sync.
            app.catalog = crate::rules::catalog(&app);
            Ok(match cmd {
                DeskCommand::Login(_) => return Err(anyhow!("unreachable: handled above")),
                DeskCommand::Types => crate::call(&mut app, &CallCommand::Types)?,
                DeskCommand::Recalls => {
                    let RpcResult::Recalls(rows) = rpc(client, RpcCall::RecallList).await? else {
                        return Err(anyhow!("unexpected answer"));
                    };
                    Report {
                        text: if rows.is_empty() {
                            "no recalls".to_owned()
                        } else {
                            rows.iter()
                                .map(|r| {
                                    format!(
                                        "{}  {}  {}  {}",
                                        app.fmt_time(r.recall_at),
                                        r.id,
                                        r.company,
                                        r.owner
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("\n")
                        },
                        json: serde_json::to_value(&rows)?,
                    }
                }
                DeskCommand::Customers => {
                    let mut rows = Vec::new();
                    loop {
                        let page = RpcCall::CustomerList {
                            after: rows.last().map(|r: &wire::CustomerSummary| r.id.clone()),
                            limit: Some(wire::MAX_CUSTOMER_PAGE),
                            query: None,
                        };
                        let RpcResult::Customers(page) = rpc(client, page).await? else {
                            return Err(anyhow!("unexpected answer"));
                        };
                        let last = page.len() < wire::MAX_CUSTOMER_PAGE as usize;
                        rows.extend(page);
                        if last {
                            break;
                        }
                    }
                    Report {
                        text: rows
                            .iter()
                            .map(|r| {
                                format!(
                                    "{}  {}  {}  {}  [{}]",
                                    r.id, r.company, r.contact, r.owner, r.status
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n"),
                        json: serde_json::to_value(&rows)?,
                    }
                }
                DeskCommand::Create {
                    id,
                    company,
                    contact,
                    owner,
                    phones,
                } => {
                    let new = app.new_customer(id, company, contact, owner.as_deref(), phones)?;
                    rpc(
                        client,
                        RpcCall::CustomerCreate {
                            customer: new.clone(),
                        },
                    )
                    .await?;
                    client.settle(SETTLE).await?;
                    let c = app.load(&new.id)?.customer()?;
                    Report {
                        text: format!("created {}", render::customer(&app, &c)),
                        json: serde_json::to_value(&c)?,
                    }
                }
                DeskCommand::Open { customers } => {
                    let ids = customers
                        .iter()
                        .map(CustomerId::new)
                        .collect::<Result<Vec<_>, _>>()?;
                    rpc(
                        client,
                        RpcCall::Subscribe {
                            documents: ids.clone(),
                        },
                    )
                    .await?;
                    client.settle(SETTLE).await?;
                    let mut shown = Vec::new();
                    let mut text = Vec::new();
                    for id in &ids {
                        match app.load(id) {
                            Ok(doc) => {
                                let c = doc.customer()?;
                                text.push(render::customer(&app, &c));
                                shown.push(serde_json::to_value(&c)?);
                            }
                            Err(_) => text.push(format!("{id}: not available")),
                        }
                    }
                    Report {
                        text: text.join("\n\n"),
                        json: json!(shown),
                    }
                }
                DeskCommand::Phones => {
                    let RpcResult::Devices(devices) = rpc(client, RpcCall::Devices).await? else {
                        return Err(anyhow!("unexpected answer"));
                    };
                    Report {
                        text: devices
                            .iter()
                            .map(|d| {
                                format!(
                                    "{}  {}  {}",
                                    d.id,
                                    d.kind.as_str(),
                                    if d.online { "online" } else { "offline" }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n"),
                        json: serde_json::to_value(&devices)?,
                    }
                }
                DeskCommand::Request {
                    customer,
                    number,
                    origin,
                    no_recording,
                } => {
                    hold(client, &app, customer).await?;
                    let origin = match origin {
                        Some(o) => o.clone(),
                        None => only_phone(client).await?,
                    };
                    crate::call(
                        &mut app,
                        &CallCommand::Request {
                            customer: customer.clone(),
                            number: number.clone(),
                            origin: Some(origin),
                            no_recording: *no_recording,
                        },
                    )?
                }
                DeskCommand::Cancel { call } => {
                    crate::call(&mut app, &CallCommand::Cancel { call: call.clone() })?
                }
                DeskCommand::End { call } => crate::call(
                    &mut app,
                    &CallCommand::End {
                        call: call.clone(),
                        side: Side::Browser,
                        duration: 0,
                    },
                )?,
                DeskCommand::Result { call, result } => crate::call(
                    &mut app,
                    &CallCommand::Result {
                        call: call.clone(),
                        result: ResultArgs {
                            result_type: result.result_type.clone(),
                            recall: result.recall.clone(),
                            restrict_until: result.restrict_until.clone(),
                            status: result.status.clone(),
                            memo: result.memo.clone(),
                        },
                    },
                )?,
                DeskCommand::Show { call } => {
                    crate::call(&mut app, &CallCommand::Show { call: call.clone() })?
                }
                DeskCommand::Recording(RecordingCommand::Get { call, output }) => {
                    let call = CallId::new(call)?;
                    let connection = client
                        .connection()
                        .cloned()
                        .ok_or_else(|| anyhow!("not connected"))?;
                    let done =
                        callsync_replica::download::download_recording(&connection, &call, output)
                            .await?;
                    Report {
                        text: format!(
                            "{}: {} bytes, {:.1} s, sha256 {} -> {}",
                            done.call,
                            done.recording.size,
                            done.recording.duration_ms as f64 / 1_000.0,
                            done.recording.sha256,
                            done.path.display()
                        ),
                        json: serde_json::to_value(&done)?,
                    }
                }
                DeskCommand::Recording(RecordingCommand::Link { call }) => {
                    let call = CallId::new(call)?;
                    let RpcResult::RecordingLink(link) =
                        rpc(client, RpcCall::RecordingLink { call }).await?
                    else {
                        return Err(anyhow!("unexpected answer"));
                    };
                    Report {
                        text: format!("{} (until {})", link.path, app.fmt_time(link.expires_at)),
                        json: serde_json::to_value(&link)?,
                    }
                }
                DeskCommand::Recording(RecordingCommand::Delete { call }) => {
                    // The core's rule, checked here before recording what the
                    // server would refuse.
                    let needed = EventKind::RecordingDeleted.role_needed();
                    let role = app.session.as_ref().map(|s| s.role);
                    if role.is_none_or(|r| r < needed) {
                        return Err(ClientError::Refused(
                            wire::Refusal::RoleRequired { needed }.body(),
                        )
                        .into());
                    }
                    app.act_on_call(call, DeviceKind::Desk, EventKind::RecordingDeleted)?;
                    crate::call(&mut app, &CallCommand::Show { call: call.clone() })?
                }
                DeskCommand::Calls { pending } => {
                    let mut rows = app.store.calls(&app.tenant, None, None)?;
                    if *pending {
                        rows.retain(|r| r.phase.result_due());
                    }
                    Report {
                        text: render::call_rows(&app, &rows),
                        json: json!(
                            rows.iter()
                                .map(|r| json!({
                                    "call": r.call, "customer": r.customer, "user": r.user,
                                    "phase": r.phase, "requested_at": r.requested_at,
                                }))
                                .collect::<Vec<_>>()
                        ),
                    }
                }
            })
        }),
    ))
}

/// `callsync admin plugin list`: sync, then read the configuration this desk holds.
fn plugin_list(g: &Global, data: &Path) -> anyhow::Result<Report> {
    runtime()?.block_on(within(
        g,
        online(data, async |_client: &mut SyncClient| Ok(())),
    ))?;
    let app = App::open(g, data)?;
    let Some(doc) = crate::rules::stored_config(&app)? else {
        return Ok(Report {
            text: "no plugins installed".to_owned(),
            json: json!({ "active": null, "rulesets": [], "installs": [] }),
        });
    };
    let listing = doc.config()?.listing();
    let mut lines = Vec::new();
    for ruleset in &listing.rulesets {
        lines.push(format!(
            "{}  {}  rule set {}  zone {}  {} holidays  types: {}",
            if ruleset.active {
                "active   "
            } else {
                "installed"
            },
            ruleset.plugin,
            ruleset.id.short(),
            ruleset.time_zone,
            ruleset.holidays,
            ruleset
                .result_types
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for install in &listing.installs {
        lines.push(format!(
            "history  {}  rule set {}  by {}",
            app.fmt_time(install.at),
            install.ruleset.short(),
            install.by,
        ));
    }
    Ok(Report {
        text: lines.join("\n"),
        json: serde_json::to_value(&listing)?,
    })
}

/// The `plugin-install` request for `callsync admin plugin install` (built by the
/// core, as the admin screen's is).
fn plugin_install_call(
    file: &Path,
    settings: &[String],
    holidays: Option<&Path>,
    time_zone: &str,
) -> anyhow::Result<RpcCall> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let table = match holidays {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    Ok(callsync_core::tenant_config::install_request(
        bytes,
        settings,
        table.as_deref(),
        time_zone,
    )?)
}

/// The `plugin-install` request that makes an installed rule set active again.
fn plugin_rollback_call(g: &Global, data: &Path, ruleset: &str) -> anyhow::Result<RpcCall> {
    runtime()?.block_on(within(
        g,
        online(data, async |_client: &mut SyncClient| Ok(())),
    ))?;
    let app = App::open(g, data)?;
    let Some(doc) = crate::rules::stored_config(&app)? else {
        return Err(
            callsync_core::tenant_config::InstallRequestError::UnknownRuleset(ruleset.to_owned())
                .into(),
        );
    };
    Ok(doc.reinstall_request(ruleset)?)
}

/// `callsync admin …`, through this data directory's desk session.
pub(crate) fn admin(g: &Global, data: &Path, cmd: &AdminCommand) -> anyhow::Result<Report> {
    if !data.exists() {
        return Err(ClientError::NotLoggedIn.into());
    }
    let call = match cmd {
        AdminCommand::Plugin(PluginCommand::List) => return plugin_list(g, data),
        AdminCommand::Plugin(PluginCommand::Install {
            file,
            settings,
            holidays,
            time_zone,
        }) => plugin_install_call(file, settings, holidays.as_deref(), time_zone)?,
        AdminCommand::Plugin(PluginCommand::Rollback { ruleset }) => {
            plugin_rollback_call(g, data, ruleset)?
        }
        AdminCommand::AddUser {
            email,
            role,
            contract,
        } => RpcCall::UserAdd {
            email: UserId::new(email.trim().to_lowercase())?,
            role: (*role).into(),
            password: password("CALLSYNC_NEW_PASSWORD")?,
            contract: *contract,
        },
        AdminCommand::Grant { email } | AdminCommand::Revoke { email } => {
            RpcCall::UserSetContract {
                email: UserId::new(email.trim().to_lowercase())?,
                contract: matches!(cmd, AdminCommand::Grant { .. }),
            }
        }
        AdminCommand::Role { email, role } => RpcCall::UserSetRole {
            email: UserId::new(email.trim().to_lowercase())?,
            role: (*role).into(),
        },
        AdminCommand::ResetPassword { email } => RpcCall::UserResetPassword {
            email: UserId::new(email.trim().to_lowercase())?,
            password: password("CALLSYNC_NEW_PASSWORD")?,
        },
        AdminCommand::Users => RpcCall::UserList,
        AdminCommand::Visibility { state } => RpcCall::SetAssigneeVisibility {
            restricted: *state == OnOff::On,
        },
    };
    let method = call.method();
    let result = runtime()?.block_on(within(g, async {
        let (mut client, _) = SyncClient::connect(data).await?;
        let result = rpc(&mut client, call).await;
        client.leave().await;
        result
    }))?;
    Ok(match result {
        RpcResult::PluginInstalled(installed) => Report {
            text: format!(
                "installed {}: rule set {} is active; result types: {}",
                installed.plugin,
                installed.ruleset.short(),
                installed.result_types.join(", ")
            ),
            json: serde_json::to_value(&installed)?,
        },
        RpcResult::Users(users) => Report {
            text: users
                .iter()
                .map(|u| {
                    format!(
                        "{}  {}  {}",
                        u.email,
                        u.role,
                        if u.contract {
                            "contract"
                        } else {
                            "no contract"
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            json: serde_json::to_value(&users)?,
        },
        _ => Report {
            text: format!("{method}: done"),
            json: json!({ "done": method }),
        },
    })
}
