//! Keeping a device connected: the device session decides when to connect,
//! retry (capped exponential backoff with jitter) and stop; this loop only
//! carries messages, the session's wake-ups and local commands' writes to it.
//! On a phone it also runs the recorder (`crate::recorder`): captures while
//! recorded calls run, and uploads on streams beside the sync stream as the
//! session's upload queue decides, and tells the server where those uploads
//! stand (`upload-status`, when the session's `StatusReporter` says) so the
//! user's other devices can show it.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use callsync_core::DeviceKind;
use callsync_core::wire::{RpcCall, RpcResult};
use callsync_session::device::Phase;
use callsync_session::device::uploads::StatusReporter;
use serde::Serialize;

use crate::ClientError;
use crate::client::{ClientEvent, SyncClient, now};
use crate::recorder::{Recorder, RecorderOptions, RecordingEvent};

/// How [`run`] behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How often to look for changes written by local commands.
    pub poll: Duration,
    /// How a phone records its recorded calls (a desk records nothing).
    pub recorder: RecorderOptions,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(20),
            recorder: RecorderOptions::default(),
        }
    }
}

/// Something [`run`] tells: the sync session's events and the recorder's,
/// each one JSON object.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RunEvent<'a> {
    /// The sync session's.
    Sync(&'a ClientEvent),
    /// The recorder's.
    Recording(&'a RecordingEvent),
}

/// How often the recorder looks at the calls even when nothing arrived.
const RECORDER_LOOK: Duration = Duration::from_secs(1);

/// A failed call's events: none. The session has dropped the connection and
/// planned the next attempt (a storage error beside a local command is passing
/// trouble, not a reason to stop syncing).
fn keep_going(
    outcome: Result<Vec<ClientEvent>, ClientError>,
    failed: &mut bool,
) -> Vec<ClientEvent> {
    match outcome {
        Ok(events) => {
            *failed = false;
            events
        }
        Err(e) => {
            tracing::warn!(error = %e, "a sync step failed; the session retries");
            *failed = true;
            Vec::new()
        }
    }
}

/// After a failed step the loop waits this long before anything else, so a step
/// that keeps failing (a disk that refuses every write, a deadline already past,
/// a connection the session cannot be told is gone) cannot spin it.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(250);

/// Stays connected until `shutdown` resolves or the session stops for good (an
/// expired or ended session, a revoked contract: logging in again is the only
/// way on; the reason comes back as [`ClientError::Refused`]). Calls `on_event`
/// for everything worth telling.
pub async fn run(
    data_dir: &Path,
    options: &RunOptions,
    mut on_event: impl FnMut(RunEvent<'_>),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    tokio::pin!(shutdown);
    let mut client = SyncClient::open(data_dir)?;
    let mut recorder = match client.session().kind {
        DeviceKind::Phone => {
            let saved = client.session();
            let (recorder, events) = Recorder::open(
                data_dir,
                saved.tenant.clone(),
                saved.device.clone(),
                options.recorder.clone(),
            )?;
            events.iter().for_each(|e| on_event(RunEvent::Recording(e)));
            Some(recorder)
        }
        _ => None,
    };
    let mut events = client.start().await?;
    let mut poll = tokio::time::interval(options.poll);
    let mut look = tokio::time::interval(RECORDER_LOOK);
    let mut failed = false;
    let mut reporter = StatusReporter::default();
    // Statuses sent whose answer nobody awaits (forgotten as they end).
    let mut status_asks: Vec<u64> = Vec::new();
    loop {
        events.iter().for_each(|e| on_event(RunEvent::Sync(e)));
        if let Some(recorder) = recorder.as_mut() {
            let mut told = Vec::new();
            if client.connection().is_none() {
                told.extend(kept(recorder.disconnected(now()).map(|()| Vec::new())));
            } else {
                told.extend(kept(recorder.step(now(), client.connection())));
            }
            if !events.is_empty() {
                // A document changed: a call may have started, ended or had
                // its recording deleted.
                told.extend(kept(recorder.plan(now())));
            }
            told.iter().for_each(|e| on_event(RunEvent::Recording(e)));
            // Where the uploads stand, for the user's other devices.
            let online = client.device().phase() == Phase::Online;
            if let Some(uploads) = reporter.due(now(), online, recorder.statuses()) {
                match client.send_rpc(RpcCall::UploadStatus { uploads }).await {
                    Ok(ticket) => status_asks.push(ticket),
                    Err(e) => {
                        tracing::debug!(error = %e, "telling the uploads' status failed");
                        reporter.not_heard();
                    }
                }
            }
            status_asks.retain(|ticket| match client.take_outcome(*ticket) {
                None => true,
                Some(Ok(RpcResult::Refused(_)) | Err(_)) => {
                    reporter.not_heard();
                    false
                }
                Some(Ok(_)) => false,
            });
        }
        if client.device().phase() == Phase::Stopped {
            let reason = client
                .device()
                .stop_reason()
                .map(|r| (r.as_str(), r.words()));
            return Err(
                match events.iter().rev().find_map(|e| match e {
                    ClientEvent::Stopped {
                        code,
                        message,
                        message_ja,
                        ..
                    } => Some(callsync_core::wire::ErrorBody {
                        code: code.clone(),
                        message: message.clone(),
                        message_ja: message_ja.clone(),
                    }),
                    _ => None,
                }) {
                    Some(body) => ClientError::Refused(body),
                    None => match reason {
                        Some((code, (en, ja))) => {
                            ClientError::Refused(callsync_core::wire::ErrorBody {
                                code: code.to_owned(),
                                message: en.to_owned(),
                                message_ja: ja.to_owned(),
                            })
                        }
                        None => ClientError::NotLoggedIn,
                    },
                },
            );
        }
        if failed {
            // Whatever failed (a timeout step, a disconnect the disk could not
            // record) is tried again only after a pause.
            tokio::select! {
                () = tokio::time::sleep(PAUSE_AFTER_FAILURE) => {}
                () = &mut shutdown => {
                    client.leave().await;
                    return Ok(());
                }
            }
        }
        let upload_wake = recorder
            .as_ref()
            .filter(|_| client.connection().is_some())
            .and_then(Recorder::next_wake);
        let wake = [client.next_timeout(), upload_wake]
            .into_iter()
            .flatten()
            .min()
            .map(|at| {
                let wait = at.as_millis().saturating_sub(now().as_millis()).max(0);
                tokio::time::Instant::now() + Duration::from_millis(wait as u64)
            });
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        events = tokio::select! {
            message = client.recv(), if client.device().phase() != Phase::Offline => match message {
                Ok(message) => match client.handle_arrived(message).await {
                    Ok(events) => {
                        failed = false;
                        events
                    }
                    // A refusal that stops the session: shown at the top of the loop.
                    Err(ClientError::Refused(_)) => Vec::new(),
                    Err(e) => keep_going(client.disconnected(&e.to_string()).await, &mut failed),
                },
                Err(e) => keep_going(client.disconnected(&e.to_string()).await, &mut failed),
            },
            () = sleep => {
                if let Some(recorder) = recorder.as_mut() {
                    let told = kept(recorder.step(now(), client.connection()));
                    told.iter().for_each(|e| on_event(RunEvent::Recording(e)));
                }
                if client.next_timeout().is_some_and(|at| at <= now()) {
                    keep_going(client.handle_timeout().await, &mut failed)
                } else {
                    Vec::new()
                }
            }
            news = next_news(recorder.as_mut()) => {
                if let (Some(recorder), Some(news)) = (recorder.as_mut(), news) {
                    let told = kept(recorder.handle_news(now(), news, client.connection()));
                    told.iter().for_each(|e| on_event(RunEvent::Recording(e)));
                }
                Vec::new()
            }
            _ = look.tick(), if recorder.is_some() => {
                if let Some(recorder) = recorder.as_mut() {
                    let told = kept(recorder.plan(now()));
                    told.iter().for_each(|e| on_event(RunEvent::Recording(e)));
                }
                Vec::new()
            }
            _ = poll.tick() => {
                match client.local_changes() {
                    Ok(true) => {
                        // Another process wrote: a local command (the call
                        // started or ended), or the network kind changed.
                        if let Some(recorder) = recorder.as_mut() {
                            let mut told = kept(recorder.network_changed());
                            told.extend(kept(recorder.plan(now())));
                            told.iter().for_each(|e| on_event(RunEvent::Recording(e)));
                        }
                        keep_going(client.push_local().await, &mut failed)
                    }
                    Ok(false) => Vec::new(),
                    Err(e) => keep_going(Err(e), &mut failed),
                }
            }
            () = &mut shutdown => {
                client.leave().await;
                return Ok(());
            }
        };
    }
}

/// The recorder's events, or, when it failed (its storage, a file), the
/// failure as an event: a recording's trouble never stops the phone's sync.
fn kept(result: Result<Vec<RecordingEvent>, ClientError>) -> Vec<RecordingEvent> {
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the recorder failed a step; it tries again");
        vec![RecordingEvent::RecordingFailed {
            call: None,
            reason: e.to_string(),
        }]
    })
}

/// The recorder's next news, or never for a desk.
async fn next_news(recorder: Option<&mut Recorder>) -> Option<crate::recorder::StreamNews> {
    match recorder {
        Some(recorder) => recorder.news().await,
        None => std::future::pending().await,
    }
}
