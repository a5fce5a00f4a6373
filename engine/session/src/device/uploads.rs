//! The recordings' upload queue, sans-IO: which recording a phone uploads,
//! when, and from which byte.
//!
//! Owns: the durable queue of recordings waiting to upload (oldest first), the
//! network policy (uploads run on Wi-Fi only; on cellular or offline they wait),
//! one upload at a time, offered first so the server says how much of it it
//! holds already (a cut upload resumes there, not at 0), sent in chunks of
//! [`CHUNK_BYTES`] with at most [`CHUNKS_IN_FLIGHT`] unacknowledged, retries
//! with capped backoff and jitter (randomness passed in), refusals that end an
//! upload (not a recording, too large) and those that wait (the quota), a
//! recording deleted while queued or uploading (dropped, never uploaded
//! afterwards), and each recording's state for the screens.
//! Does not own: the bytes (the host reads the chunks it is told to send from
//! the file), the streams, or the clock: time, the network kind and the
//! server's answers are passed in, and the queue is saved by the host with the
//! rest of the device's storage ([`UploadQueue::to_bytes`]).

use callsync_core::{
    CallId, CallOrigin, CallView, DeviceId, Phase, RecordingCode, RecordingState, Timestamp,
};
use serde::{Deserialize, Serialize};

use super::Entropy;

/// The bytes of one chunk.
pub const CHUNK_BYTES: u64 = 256 * 1024;
/// Most chunks sent and not yet acknowledged.
pub const CHUNKS_IN_FLIGHT: u64 = 4;
/// The first retry's wait; it doubles up to [`MAX_RETRY_MS`].
pub const FIRST_RETRY_MS: i64 = 1_000;
/// The longest wait between tries.
pub const MAX_RETRY_MS: i64 = 5 * 60 * 1_000;
/// How long a recording waits when the tenant's storage is full.
pub const QUOTA_RETRY_MS: i64 = 60 * 60 * 1_000;

/// The network a phone is on, as its connectivity callbacks say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkKind {
    /// Wi-Fi: uploads run.
    Wifi,
    /// Mobile data: uploads wait.
    Cellular,
    /// No network.
    Offline,
}

pub use callsync_core::recording::{UploadState, UploadStatus};

/// One recording waiting to upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedUpload {
    /// The call it recorded.
    pub call: CallId,
    /// SHA-256 of the file, hex.
    pub hash: String,
    /// The file's size.
    pub bytes: u64,
    /// How much of it the server has confirmed.
    pub acked: u64,
    /// Failed tries in a row.
    pub failures: u32,
    /// Not before this time.
    pub not_before: Option<Timestamp>,
}

/// What the server or the link said about the upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadInput {
    /// The phone's network changed.
    Network(NetworkKind),
    /// A finished recording joins the queue.
    Queued {
        /// The call.
        call: CallId,
        /// SHA-256 of the file, hex.
        hash: String,
        /// Its size.
        bytes: u64,
    },
    /// The server holds the first `held` bytes of the recording offered.
    Offered {
        /// The call.
        call: CallId,
        /// Bytes it holds already.
        held: u64,
    },
    /// The server has written the recording's bytes up to `upto`.
    Acked {
        /// The call.
        call: CallId,
        /// Bytes confirmed.
        upto: u64,
    },
    /// The server verified and stored the recording, and referenced it in the
    /// customer's document.
    Stored {
        /// The call.
        call: CallId,
    },
    /// The server refused the upload.
    Refused {
        /// The call.
        call: CallId,
        /// Its code (`recording-not-wav`, `recording-quota-full`, …).
        code: String,
    },
    /// The stream or the connection broke mid-upload.
    Broken,
    /// The recording was deleted (its tombstone arrived): never upload it.
    Deleted {
        /// The call.
        call: CallId,
    },
}

/// What the host is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadCommand {
    /// Open an upload stream and offer the recording (the server answers
    /// [`UploadInput::Offered`]).
    Offer {
        /// The call.
        call: CallId,
        /// SHA-256, hex.
        hash: String,
        /// Its size.
        bytes: u64,
    },
    /// Send bytes `offset..offset + len` of the call's file.
    Send {
        /// The call.
        call: CallId,
        /// Where the chunk starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// Stop uploading the call: close its stream (the network left Wi-Fi, or
    /// the recording was deleted).
    Abort {
        /// The call.
        call: CallId,
    },
    /// The upload is over (stored on the server, the recording deleted, or
    /// refused for good): the host removes it from its own queue's files.
    Done {
        /// The call.
        call: CallId,
        /// Why, as a code: `stored`, `deleted`, or the refusal's.
        outcome: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Flight {
    /// Offered; waiting for the server to say what it holds.
    Offered,
    /// Sending; `sent` bytes handed to the stream so far.
    Sending { sent: u64 },
}

/// The queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadQueue {
    queue: Vec<QueuedUpload>,
    network: NetworkKind,
    /// The upload in progress: the first of the queue. Not saved: after a
    /// restart the recording is offered again and resumes where the server is.
    #[serde(skip)]
    flight: Option<Flight>,
}

impl Default for UploadQueue {
    fn default() -> Self {
        Self {
            queue: Vec::new(),
            network: NetworkKind::Offline,
            flight: None,
        }
    }
}

impl UploadQueue {
    /// The queue as saved by [`UploadQueue::to_bytes`] (an empty one for no
    /// bytes; bytes that do not read are an error, never an empty queue).
    pub fn from_bytes(bytes: Option<&[u8]>) -> Result<Self, serde_json::Error> {
        match bytes {
            None => Ok(Self::default()),
            Some(bytes) => serde_json::from_slice(bytes),
        }
    }

    /// The queue to save.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The recordings waiting, oldest first.
    pub fn queued(&self) -> &[QueuedUpload] {
        &self.queue
    }

    /// The call's upload as the screens show it (`None`: not queued).
    pub fn state(&self, call: &CallId) -> Option<UploadState> {
        let (index, entry) = self
            .queue
            .iter()
            .enumerate()
            .find(|(_, e)| &e.call == call)?;
        if index == 0 && self.flight.is_some() {
            let percent = (entry.acked * 100).checked_div(entry.bytes).unwrap_or(100);
            return Some(UploadState::Uploading {
                percent: percent.min(100) as u8,
            });
        }
        if let Some(at) = entry.not_before {
            return Some(UploadState::WaitingToRetry { at });
        }
        Some(match self.network {
            NetworkKind::Wifi => UploadState::Queued,
            NetworkKind::Cellular | NetworkKind::Offline => UploadState::WaitingForWifi,
        })
    }

    /// Every queued recording's state, oldest first (at most
    /// [`callsync_core::recording::MAX_UPLOAD_STATUSES`]): what the phone
    /// tells the server for the user's other devices.
    pub fn statuses(&self) -> Vec<UploadStatus> {
        self.queue
            .iter()
            .take(callsync_core::recording::MAX_UPLOAD_STATUSES)
            .filter_map(|e| {
                Some(UploadStatus {
                    call: e.call.clone(),
                    state: self.state(&e.call)?,
                })
            })
            .collect()
    }

    /// When the queue next wants [`UploadQueue::poll`] to be called.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.flight.is_some() || self.network != NetworkKind::Wifi {
            return None;
        }
        self.queue
            .iter()
            .map(|e| e.not_before.unwrap_or(Timestamp::from_millis(0)))
            .min()
    }

    /// Takes in what happened; returns what the host is to do.
    pub fn handle(
        &mut self,
        now: Timestamp,
        rng: &mut dyn Entropy,
        input: UploadInput,
    ) -> Vec<UploadCommand> {
        let mut out = Vec::new();
        match input {
            UploadInput::Network(kind) => out.extend(self.set_network(kind)),
            UploadInput::Queued { call, hash, bytes } => self.enqueue(call, hash, bytes),
            UploadInput::Offered { call, held } => {
                if self.is_current(&call)
                    && self.flight == Some(Flight::Offered)
                    && let Some(entry) = self.queue.first_mut()
                {
                    // The server's word wins: a smaller figure than ours
                    // means it lost bytes it had confirmed.
                    entry.acked = held.min(entry.bytes);
                    self.flight = Some(Flight::Sending { sent: entry.acked });
                }
            }
            UploadInput::Acked { call, upto } => {
                if self.is_current(&call)
                    && let Some(entry) = self.queue.first_mut()
                {
                    entry.acked = entry.acked.max(upto.min(entry.bytes));
                    entry.failures = 0;
                }
            }
            UploadInput::Stored { call } => {
                if let Some(index) = self.queue.iter().position(|e| e.call == call) {
                    self.queue.remove(index);
                    if index == 0 {
                        self.flight = None;
                    }
                    out.push(UploadCommand::Done {
                        call,
                        outcome: "stored".to_owned(),
                    });
                }
            }
            UploadInput::Refused { call, code } => {
                if self.is_current(&call) {
                    self.flight = None;
                    let known = RecordingCode::parse(&code);
                    if known.is_some_and(RecordingCode::is_final) {
                        self.queue.remove(0);
                        out.push(UploadCommand::Done {
                            call,
                            outcome: code,
                        });
                    } else if let Some(entry) = self.queue.first_mut() {
                        let wait = if known == Some(RecordingCode::QuotaFull) {
                            QUOTA_RETRY_MS
                        } else {
                            backoff(entry.failures, rng)
                        };
                        entry.failures = entry.failures.saturating_add(1);
                        entry.not_before = Some(now.plus_millis(wait));
                        // A corrupted chunk is sent again from what the
                        // server confirmed; the offer asks again.
                        self.requeue_last();
                    }
                }
            }
            UploadInput::Broken => {
                if self.flight.take().is_some()
                    && let Some(entry) = self.queue.first_mut()
                {
                    let wait = backoff(entry.failures, rng);
                    entry.failures = entry.failures.saturating_add(1);
                    entry.not_before = Some(now.plus_millis(wait));
                }
            }
            UploadInput::Deleted { call } => {
                if let Some(index) = self.queue.iter().position(|e| e.call == call) {
                    if index == 0 && self.flight.take().is_some() {
                        out.push(UploadCommand::Abort { call: call.clone() });
                    }
                    self.queue.remove(index);
                    out.push(UploadCommand::Done {
                        call,
                        outcome: "deleted".to_owned(),
                    });
                }
            }
        }
        out.extend(self.poll(now));
        out
    }

    /// Takes back an offer the host could not make (no connection to open a
    /// stream on yet): nothing was sent, so no failure is counted; the next
    /// [`UploadQueue::poll`] offers again.
    pub fn withdraw(&mut self) {
        if self.flight == Some(Flight::Offered) {
            self.flight = None;
        }
    }

    /// The phone's network changed: leaving Wi-Fi stops the upload in
    /// progress (keeping what the server confirmed). Starts nothing: the next
    /// [`UploadQueue::poll`] does, once the host can open a stream.
    pub fn set_network(&mut self, kind: NetworkKind) -> Vec<UploadCommand> {
        let mut out = Vec::new();
        self.network = kind;
        if kind != NetworkKind::Wifi {
            self.abort(&mut out);
        }
        out
    }

    /// A finished recording joins the queue (once: a call already queued is
    /// not queued twice). Starts nothing: see [`UploadQueue::poll`].
    pub fn enqueue(&mut self, call: CallId, hash: String, bytes: u64) {
        if !self.queue.iter().any(|e| e.call == call) {
            self.queue.push(QueuedUpload {
                call,
                hash,
                bytes,
                acked: 0,
                failures: 0,
                not_before: None,
            });
        }
    }

    /// Starts the next upload when the policy allows, and sends what the
    /// in-flight window has room for.
    pub fn poll(&mut self, now: Timestamp) -> Vec<UploadCommand> {
        self.poll_when(now, &|_| true)
    }

    /// [`UploadQueue::poll`], starting no upload whose call `synced` says the
    /// server does not hold yet (the device's own events of it still unsent):
    /// the server would refuse it (`recording-call-not-started`) and the queue
    /// would back off for nothing. The host asks again once its outbox moved.
    pub fn poll_when(
        &mut self,
        now: Timestamp,
        synced: &dyn Fn(&CallId) -> bool,
    ) -> Vec<UploadCommand> {
        let mut out = Vec::new();
        if self.network != NetworkKind::Wifi {
            return out;
        }
        if self.flight.is_none() {
            // The oldest recording ready to go: one waiting to retry, or whose
            // call the server does not hold yet, does not hold up those behind
            // it. The upload in progress is always the queue's first.
            let Some(ready) = self
                .queue
                .iter()
                .position(|e| e.not_before.is_none_or(|at| at <= now) && synced(&e.call))
            else {
                return out;
            };
            let entry = self.queue.remove(ready);
            self.queue.insert(0, entry);
        }
        let Some(entry) = self.queue.first_mut() else {
            return out;
        };
        match &mut self.flight {
            None => {
                entry.not_before = None;
                self.flight = Some(Flight::Offered);
                out.push(UploadCommand::Offer {
                    call: entry.call.clone(),
                    hash: entry.hash.clone(),
                    bytes: entry.bytes,
                });
            }
            Some(Flight::Offered) => {}
            Some(Flight::Sending { sent }) => {
                let window_end = entry
                    .acked
                    .saturating_add(CHUNKS_IN_FLIGHT * CHUNK_BYTES)
                    .min(entry.bytes);
                while *sent < window_end {
                    let len = CHUNK_BYTES.min(entry.bytes - *sent);
                    out.push(UploadCommand::Send {
                        call: entry.call.clone(),
                        offset: *sent,
                        len,
                    });
                    *sent += len;
                }
            }
        }
        out
    }

    fn is_current(&self, call: &CallId) -> bool {
        self.flight.is_some() && self.queue.first().is_some_and(|e| &e.call == call)
    }

    /// Stops the upload in progress, keeping what the server confirmed.
    fn abort(&mut self, out: &mut Vec<UploadCommand>) {
        if self.flight.take().is_some()
            && let Some(entry) = self.queue.first()
        {
            out.push(UploadCommand::Abort {
                call: entry.call.clone(),
            });
        }
    }

    /// Moves the first recording behind the others, so one that keeps failing
    /// does not hold up the rest.
    fn requeue_last(&mut self) {
        if self.queue.len() > 1 {
            let first = self.queue.remove(0);
            self.queue.push(first);
        }
    }
}

/// What the phone's recorder is to do, given the calls that may need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturePlan {
    /// Start recording these calls.
    pub start: Vec<CallId>,
    /// Stop recording these (and queue their files).
    pub stop: Vec<CallId>,
    /// Their recordings were deleted: drop the files and never upload them.
    pub deleted: Vec<CallId>,
}

/// Whether the phone is on the call: started and not yet ended on the phone
/// (the desk ending first leaves the phone on the line until it hangs up).
fn on_the_line(view: &CallView) -> bool {
    matches!(view.phase, Phase::InCall | Phase::BrowserEnded)
}

/// Decides which recordings the phone `me` captures: a call this phone dialed
/// with the recording switch on is recorded from its start until the phone
/// ends it; with the switch off there is no recording at all. `calls` are the
/// calls that may need it (the host's candidates: those on the line, those
/// being captured, and those whose recording was deleted); `capturing` are
/// those being recorded now, `captured` those with a file already (a phone
/// restarted after a crash mid-call keeps what it captured and does not start
/// the call's recording again).
pub fn capture_plan(
    calls: &[CallView],
    me: &DeviceId,
    capturing: &[CallId],
    captured: &dyn Fn(&CallId) -> bool,
) -> CapturePlan {
    let mut plan = CapturePlan::default();
    for view in calls {
        let recorded_here = matches!(
            &view.origin,
            CallOrigin::Dialed { origin, recording: true, .. } if origin == me
        );
        if !recorded_here {
            continue;
        }
        let is_capturing = capturing.contains(&view.call);
        if view.recording_state == RecordingState::Deleted {
            if is_capturing {
                plan.stop.push(view.call.clone());
            }
            plan.deleted.push(view.call.clone());
        } else if on_the_line(view) {
            if !is_capturing && !captured(&view.call) {
                plan.start.push(view.call.clone());
            }
        } else if is_capturing {
            plan.stop.push(view.call.clone());
        }
    }
    // A call being recorded that is no longer among the candidates (its
    // document was forgotten) stops too.
    for call in capturing {
        if !calls.iter().any(|v| &v.call == call) {
            plan.stop.push(call.clone());
        }
    }
    plan
}

/// The wait before try `failures + 1`: doubling from [`FIRST_RETRY_MS`] to
/// [`MAX_RETRY_MS`], with full jitter.
fn backoff(failures: u32, rng: &mut dyn Entropy) -> i64 {
    let cap = FIRST_RETRY_MS
        .saturating_mul(1i64 << failures.min(20))
        .min(MAX_RETRY_MS);
    (cap as f64 * rng.unit()).max(FIRST_RETRY_MS as f64 / 2.0) as i64
}

/// The least time between two statuses whose only news is a percentage.
pub const STATUS_EVERY_MS: i64 = 1_000;
/// The least time between any two statuses: twice the hub's
/// `UPLOAD_STATUS_GAP_MS`, so the device's clock (the server's, corrected
/// by an offset known within half a round trip) never sends one the hub
/// finds too soon.
pub const STATUS_GAP_MS: i64 = 500;

/// When a phone tells the server where its uploads stand (`upload-status`,
/// relayed to the user's other devices): as soon as [`STATUS_GAP_MS`] allows
/// when a recording joins or leaves the queue or changes stage, at most once
/// per [`STATUS_EVERY_MS`] for a percentage, again after every reconnect (the
/// server forgets a phone's status when it goes away) and after a status the
/// server refused or that was lost, and never twice the same.
#[derive(Debug, Default)]
pub struct StatusReporter {
    /// What the server holds from this connection (`None`: nothing, or not
    /// known to have arrived).
    sent: Option<Vec<UploadStatus>>,
    /// When the last status was sent.
    at: Option<Timestamp>,
}

impl StatusReporter {
    /// The status to send now, if any (`connected`: a connection is up).
    /// What is not due yet is due at a later call with the same statuses.
    pub fn due(
        &mut self,
        now: Timestamp,
        connected: bool,
        statuses: Vec<UploadStatus>,
    ) -> Option<Vec<UploadStatus>> {
        if !connected {
            self.sent = None;
            return None;
        }
        let since = self.at.map(|at| now.as_millis() - at.as_millis());
        if since.is_some_and(|ms| ms < STATUS_GAP_MS) {
            return None;
        }
        let due = match &self.sent {
            // Nothing to say to a server that heard nothing yet.
            None => !statuses.is_empty(),
            Some(sent) if *sent == statuses => false,
            Some(sent) => {
                let stages =
                    |list: &[UploadStatus]| -> Vec<(CallId, std::mem::Discriminant<UploadState>)> {
                        list.iter()
                            .map(|s| (s.call.clone(), std::mem::discriminant(&s.state)))
                            .collect()
                    };
                stages(sent) != stages(&statuses) || since.is_none_or(|ms| ms >= STATUS_EVERY_MS)
            }
        };
        if !due {
            return None;
        }
        self.sent = Some(statuses.clone());
        self.at = Some(now);
        Some(statuses)
    }

    /// The last status was refused or lost: it is said again when due.
    pub fn not_heard(&mut self) {
        self.sent = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::SplitMix64;

    const MB: u64 = 1024 * 1024;

    fn call(id: &str) -> CallId {
        CallId::new(id).unwrap()
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn queued(id: &str, bytes: u64) -> UploadInput {
        UploadInput::Queued {
            call: call(id),
            hash: format!("hash-of-{id}"),
            bytes,
        }
    }

    /// Plays the server: answers an offer with `held`, acknowledges every chunk
    /// in order, stops at the first chunk past `cut`; returns the bytes sent
    /// and whether the recording was stored.
    fn serve(
        queue: &mut UploadQueue,
        rng: &mut SplitMix64,
        commands: Vec<UploadCommand>,
        held: u64,
        cut: Option<u64>,
    ) -> (u64, bool) {
        let mut pending: std::collections::VecDeque<UploadCommand> = commands.into();
        let (mut sent, mut stored, mut total) = (0, false, 0);
        while let Some(command) = pending.pop_front() {
            let next = match command {
                UploadCommand::Offer { call, bytes, .. } => {
                    total = bytes;
                    queue.handle(at(0), rng, UploadInput::Offered { call, held })
                }
                UploadCommand::Send { call, offset, len } => {
                    if cut.is_some_and(|c| offset + len > c) {
                        return (sent, stored);
                    }
                    sent += len;
                    let upto = offset + len;
                    let mut next = queue.handle(
                        at(0),
                        rng,
                        UploadInput::Acked {
                            call: call.clone(),
                            upto,
                        },
                    );
                    if upto == total {
                        next.extend(queue.handle(at(0), rng, UploadInput::Stored { call }));
                    }
                    next
                }
                UploadCommand::Done { outcome, .. } => {
                    stored |= outcome == "stored";
                    Vec::new()
                }
                UploadCommand::Abort { .. } => Vec::new(),
            };
            pending.extend(next);
        }
        (sent, stored)
    }

    #[test]
    fn on_cellular_nothing_uploads_and_on_wifi_it_starts_at_once() {
        let mut rng = SplitMix64::new(1);
        let mut queue = UploadQueue::default();
        assert!(
            queue
                .handle(at(0), &mut rng, UploadInput::Network(NetworkKind::Cellular))
                .is_empty()
        );
        assert!(
            queue
                .handle(at(0), &mut rng, queued("call-1", 3 * MB))
                .is_empty()
        );
        assert_eq!(
            queue.state(&call("call-1")),
            Some(UploadState::WaitingForWifi)
        );
        assert_eq!(queue.poll(at(1_000_000)), Vec::new());

        let commands = queue.handle(at(0), &mut rng, UploadInput::Network(NetworkKind::Wifi));
        assert!(matches!(&commands[..], [UploadCommand::Offer { bytes, .. }] if *bytes == 3 * MB));
        let (sent, stored) = serve(&mut queue, &mut rng, commands, 0, None);
        assert_eq!(sent, 3 * MB);
        assert!(stored);
        assert!(queue.queued().is_empty());
    }

    #[test]
    fn a_connection_cut_at_90_percent_resumes_there_and_resends_at_most_one_chunk() {
        let mut rng = SplitMix64::new(2);
        let mut queue = UploadQueue::default();
        queue.handle(at(0), &mut rng, UploadInput::Network(NetworkKind::Wifi));
        let total = 40 * CHUNK_BYTES;
        let commands = queue.handle(at(0), &mut rng, queued("call-2", total));
        let cut = total * 9 / 10;
        let (first, stored) = serve(&mut queue, &mut rng, commands, 0, Some(cut));
        assert!(!stored);
        assert_eq!(first, 36 * CHUNK_BYTES);
        assert_eq!(
            queue.state(&call("call-2")),
            Some(UploadState::Uploading { percent: 90 })
        );

        // The link breaks; the retry waits, then offers again and the server
        // says how much it holds.
        assert!(
            queue
                .handle(at(10), &mut rng, UploadInput::Broken)
                .is_empty()
        );
        let retry = queue.poll_timeout().unwrap();
        assert!(retry > at(10));
        assert!(queue.poll(at(10)).is_empty(), "not before the backoff");
        let commands = queue.poll(retry);
        let (second, stored) = serve(&mut queue, &mut rng, commands, first, None);
        assert!(stored);
        assert_eq!(
            first + second,
            total,
            "no byte sent twice when the server held all it confirmed"
        );

        // Had the server lost the last unconfirmed chunk, at most one is re-sent.
        let mut queue = UploadQueue::default();
        queue.handle(at(0), &mut rng, UploadInput::Network(NetworkKind::Wifi));
        let commands = queue.handle(at(0), &mut rng, queued("call-3", total));
        let (first, _) = serve(&mut queue, &mut rng, commands, 0, Some(cut));
        queue.handle(at(10), &mut rng, UploadInput::Broken);
        let commands = queue.poll(queue.poll_timeout().unwrap());
        let (second, stored) = serve(&mut queue, &mut rng, commands, first - CHUNK_BYTES, None);
        assert!(stored);
        assert_eq!(first + second - total, CHUNK_BYTES);
    }

    #[test]
    fn leaving_wifi_stops_the_upload_and_wifi_again_resumes_it() {
        let mut rng = SplitMix64::new(3);
        let mut queue = UploadQueue::default();
        queue.handle(at(0), &mut rng, UploadInput::Network(NetworkKind::Wifi));
        let commands = queue.handle(at(0), &mut rng, queued("call-4", 20 * CHUNK_BYTES));
        let (first, _) = serve(&mut queue, &mut rng, commands, 0, Some(10 * CHUNK_BYTES));
        let out = queue.handle(at(5), &mut rng, UploadInput::Network(NetworkKind::Cellular));
        assert_eq!(
            out,
            vec![UploadCommand::Abort {
                call: call("call-4")
            }]
        );
        assert_eq!(
            queue.state(&call("call-4")),
            Some(UploadState::WaitingForWifi)
        );
        let commands = queue.handle(at(6), &mut rng, UploadInput::Network(NetworkKind::Wifi));
        let (second, stored) = serve(&mut queue, &mut rng, commands, first, None);
        assert!(stored);
        assert_eq!(first + second, 20 * CHUNK_BYTES);
    }

    #[test]
    fn a_recording_deleted_while_queued_or_uploading_is_never_uploaded() {
        let mut rng = SplitMix64::new(4);
        let mut queue = UploadQueue::default();
        queue.handle(at(0), &mut rng, queued("call-5", MB));
        let out = queue.handle(
            at(1),
            &mut rng,
            UploadInput::Deleted {
                call: call("call-5"),
            },
        );
        assert_eq!(
            out,
            vec![UploadCommand::Done {
                call: call("call-5"),
                outcome: "deleted".to_owned()
            }]
        );
        assert!(
            queue
                .handle(at(2), &mut rng, UploadInput::Network(NetworkKind::Wifi))
                .is_empty()
        );

        let commands = queue.handle(at(3), &mut rng, queued("call-6", MB));
        assert!(matches!(&commands[..], [UploadCommand::Offer { .. }]));
        queue.handle(
            at(4),
            &mut rng,
            UploadInput::Offered {
                call: call("call-6"),
                held: 0,
            },
        );
        let out = queue.handle(
            at(5),
            &mut rng,
            UploadInput::Deleted {
                call: call("call-6"),
            },
        );
        assert_eq!(
            out,
            vec![
                UploadCommand::Abort {
                    call: call("call-6")
                },
                UploadCommand::Done {
                    call: call("call-6"),
                    outcome: "deleted".to_owned()
                },
            ]
        );
        assert!(queue.queued().is_empty());
        // A late answer for it changes nothing.
        assert!(
            queue
                .handle(
                    at(6),
                    &mut rng,
                    UploadInput::Acked {
                        call: call("call-6"),
                        upto: MB
                    }
                )
                .is_empty()
        );
    }

    #[test]
    fn refusals_end_an_upload_or_make_it_wait_and_a_restart_keeps_the_queue() {
        let mut rng = SplitMix64::new(5);
        let mut queue = UploadQueue::default();
        queue.handle(at(0), &mut rng, UploadInput::Network(NetworkKind::Wifi));
        queue.handle(at(0), &mut rng, queued("call-7", MB));
        queue.handle(at(0), &mut rng, queued("call-8", MB));
        let out = queue.handle(
            at(1),
            &mut rng,
            UploadInput::Refused {
                call: call("call-7"),
                code: "recording-not-wav".to_owned(),
            },
        );
        assert_eq!(
            out[0],
            UploadCommand::Done {
                call: call("call-7"),
                outcome: "recording-not-wav".to_owned()
            }
        );
        assert!(
            matches!(&out[1], UploadCommand::Offer { call, .. } if call == &self::call("call-8"))
        );
        let out = queue.handle(
            at(2),
            &mut rng,
            UploadInput::Refused {
                call: call("call-8"),
                code: "recording-quota-full".to_owned(),
            },
        );
        assert!(out.is_empty());
        assert_eq!(
            queue.state(&call("call-8")),
            Some(UploadState::WaitingToRetry {
                at: at(2 + QUOTA_RETRY_MS)
            })
        );

        // A restart: the queue comes back from its bytes; what was in flight
        // is offered again.
        let saved = queue.to_bytes();
        let mut restarted = UploadQueue::from_bytes(Some(&saved)).unwrap();
        assert_eq!(restarted.queued(), queue.queued());
        restarted.handle(at(3), &mut rng, UploadInput::Network(NetworkKind::Wifi));
        let commands = restarted.poll(at(3 + QUOTA_RETRY_MS));
        assert!(matches!(&commands[..], [UploadCommand::Offer { .. }]));
        assert!(UploadQueue::from_bytes(Some(b"not json")).is_err());
        assert_eq!(
            UploadQueue::from_bytes(None).unwrap(),
            UploadQueue::default()
        );
    }

    /// A call dialed by `origin` with the switch as given, after `events`
    /// (`started`, `phone-ended`, `deleted`).
    fn view(id: &str, origin: &str, recording: bool, events: &[&str]) -> CallView {
        use callsync_core::{
            CallEvent, DeviceKind, EventId, EventKind, PhoneNumber, Stamp, UserId,
        };
        let stamp = |ms: i64, kind: DeviceKind| Stamp {
            at: at(ms),
            device: DeviceId::new(if kind == DeviceKind::Desk {
                "desk-1"
            } else {
                origin
            })
            .unwrap(),
            device_kind: kind,
            user: UserId::new("rep@acme.example").unwrap(),
            device_at: None,
        };
        let mut all = vec![CallEvent {
            id: EventId::new(format!("{id}-requested")).unwrap(),
            call: call(id),
            stamp: stamp(0, DeviceKind::Desk),
            kind: EventKind::Requested {
                destination: PhoneNumber::parse("03-1234-5678").unwrap(),
                origin: DeviceId::new(origin).unwrap(),
                recording,
            },
        }];
        for (n, name) in events.iter().enumerate() {
            let (kind, device) = match *name {
                "started" => (EventKind::Started, DeviceKind::Phone),
                "phone-ended" => (
                    EventKind::PhoneEnded { duration_secs: 3 },
                    DeviceKind::Phone,
                ),
                "deleted" => (EventKind::RecordingDeleted, DeviceKind::Desk),
                other => panic!("no event {other}"),
            };
            all.push(CallEvent {
                id: EventId::new(format!("{id}-{name}")).unwrap(),
                call: call(id),
                stamp: stamp(1_000 * (n as i64 + 1), device),
                kind,
            });
        }
        callsync_core::lifecycle::derive_call(&call(id), &all).unwrap()
    }

    #[test]
    fn only_this_phones_recorded_calls_are_captured_from_start_to_the_phones_end() {
        let me = DeviceId::new("phone-1").unwrap();
        let none = |_: &CallId| false;
        let calls = [
            view("on", "phone-1", true, &["started"]),
            view("off", "phone-1", false, &["started"]),
            view("other", "phone-2", true, &["started"]),
            view("waiting", "phone-1", true, &[]),
        ];
        let plan = capture_plan(&calls, &me, &[], &none);
        assert_eq!(
            plan.start,
            [call("on")],
            "switch off, another phone or not started: none"
        );
        assert!(plan.stop.is_empty() && plan.deleted.is_empty());
        // Being captured, or captured before a restart: not started again.
        assert!(
            capture_plan(&calls, &me, &[call("on")], &none)
                .start
                .is_empty()
        );
        assert!(
            capture_plan(&calls, &me, &[], &|c: &CallId| c == &call("on"))
                .start
                .is_empty()
        );
        // The phone's end stops it; so does a deletion, which also drops it.
        let ended = [view("on", "phone-1", true, &["started", "phone-ended"])];
        let plan = capture_plan(&ended, &me, &[call("on")], &none);
        assert_eq!((plan.start.len(), plan.stop.clone()), (0, vec![call("on")]));
        let deleted = [view("on", "phone-1", true, &["started", "deleted"])];
        let plan = capture_plan(&deleted, &me, &[call("on")], &none);
        assert_eq!(plan.stop, [call("on")]);
        assert_eq!(plan.deleted, [call("on")]);
        // A capture whose call is gone from the candidates stops.
        assert_eq!(
            capture_plan(&[], &me, &[call("gone")], &none).stop,
            [call("gone")]
        );
    }

    #[test]
    fn no_upload_starts_before_the_server_holds_its_calls_events() {
        let mut queue = UploadQueue::default();
        queue.set_network(NetworkKind::Wifi);
        queue.enqueue(call("c1"), "hash".to_owned(), 10);
        assert!(queue.poll_when(at(0), &|_| false).is_empty(), "held back");
        assert_eq!(queue.state(&call("c1")), Some(UploadState::Queued));
        let offered = queue.poll_when(at(1), &|_| true);
        assert!(matches!(
            offered.as_slice(),
            [UploadCommand::Offer { bytes: 10, .. }]
        ));
    }

    fn status(call_id: &str, state: UploadState) -> UploadStatus {
        UploadStatus {
            call: call(call_id),
            state,
        }
    }

    #[test]
    fn a_status_is_sent_on_a_new_stage_soon_and_on_a_percentage_at_most_once_a_second() {
        let mut reporter = StatusReporter::default();
        let t = Timestamp::from_millis;
        assert_eq!(reporter.due(t(0), true, vec![]), None, "nothing to say");
        let waiting = vec![status("c1", UploadState::WaitingForWifi)];
        assert_eq!(reporter.due(t(1), false, waiting.clone()), None, "offline");
        assert_eq!(
            reporter.due(t(2), true, waiting.clone()),
            Some(waiting.clone())
        );
        assert_eq!(
            reporter.due(t(600), true, waiting.clone()),
            None,
            "said already"
        );
        let at = |percent| vec![status("c1", UploadState::Uploading { percent })];
        assert_eq!(
            reporter.due(t(700), true, at(10)),
            Some(at(10)),
            "a new stage"
        );
        assert_eq!(
            reporter.due(t(1_300), true, at(50)),
            None,
            "too soon for a percentage"
        );
        assert_eq!(reporter.due(t(1_700), true, at(90)), Some(at(90)));
        // A new stage within the gap waits for the gap, then goes.
        assert_eq!(reporter.due(t(1_800), true, vec![]), None);
        assert_eq!(
            reporter.due(t(2_200), true, vec![]),
            Some(vec![]),
            "left the queue"
        );
        // A reconnect: the server forgot; an empty queue needs no word.
        assert_eq!(reporter.due(t(3_000), false, at(5)), None);
        assert_eq!(reporter.due(t(3_100), true, at(5)), Some(at(5)));
        reporter.due(t(4_000), false, vec![]);
        assert_eq!(reporter.due(t(5_000), true, vec![]), None);
        // A status the server refused (or lost) is said again once the gap allows.
        assert_eq!(
            reporter.due(t(6_000), true, waiting.clone()),
            Some(waiting.clone())
        );
        reporter.not_heard();
        assert_eq!(
            reporter.due(t(6_100), true, waiting.clone()),
            None,
            "within the gap"
        );
        assert_eq!(reporter.due(t(6_500), true, waiting.clone()), Some(waiting));
    }

    #[test]
    fn a_recording_whose_call_has_not_synced_does_not_hold_up_those_behind_it() {
        let mut queue = UploadQueue::default();
        queue.set_network(NetworkKind::Wifi);
        queue.enqueue(call("c1"), "h1".to_owned(), 10);
        queue.enqueue(call("c2"), "h2".to_owned(), 10);
        let offered = queue.poll_when(at(0), &|c| c != &call("c1"));
        assert!(
            matches!(offered.as_slice(), [UploadCommand::Offer { call: c, .. }] if c == &call("c2")),
            "{offered:?}"
        );
        assert!(matches!(
            queue.state(&call("c2")),
            Some(UploadState::Uploading { .. })
        ));
        assert_eq!(queue.state(&call("c1")), Some(UploadState::Queued));
    }
}
