//! The phone's recorder and uploader: the host of the device session's
//! capture plan and upload queue (`callsync_session::device::uploads`).
//!
//! Owns: the threads that capture a call's audio into its WAV file, hashing a
//! finished file, the queue's place in the phone's store (saved whenever what
//! it holds changes), the network kind as the phone knows it (set with
//! `callsync phone network`, read from the store), the upload streams beside
//! the sync stream (one per upload: opened on the sync connection, chunks read
//! from the file as the queue says), removing a deleted recording's file, and
//! the events the phone reports.
//! Does not own: what to record, when to upload, from which byte, or what a
//! refusal means (the session's plan and queue decide; this carries it out).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use callsync_core::wire::stream::{self, StreamOpen, StreamReply};
use callsync_core::{CallId, DeviceId, RecordingCode, TenantId, Timestamp};
use callsync_net::framing::{read_frame_within, write_frame};
use callsync_session::device::uploads::{
    CapturePlan, NetworkKind, UploadCommand, UploadInput, UploadQueue, UploadState, capture_plan,
};
use callsync_store::Store;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::capture::{
    AudioSource, Capture, CaptureError, Captured, RECORDINGS_DIR, Tone, WavSource,
};
use crate::session::SystemEntropy;
use crate::{ClientError, DB_FILE};

/// How soon an upload held back until its call's events are sent is looked at
/// again.
const HELD_BACK_LOOK_MS: i64 = 200;
/// The store setting holding the upload queue.
pub const QUEUE_KEY: &str = "upload-queue";
/// Where recordings the server refused for good are kept, under the
/// recordings directory.
pub const REFUSED_DIR: &str = "refused";
/// The store setting holding the phone's network kind.
pub const NETWORK_KEY: &str = "network-kind";

/// Where a recorded call's audio comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Audio {
    /// A sine tone at this many hertz (the default: 440).
    Tone(f64),
    /// A fixture WAV (mono 16-bit), looped.
    File(PathBuf),
}

/// How the recorder records.
#[derive(Debug, Clone, PartialEq)]
pub struct RecorderOptions {
    /// Samples per second: 8,000 or 16,000.
    pub sample_rate: u32,
    /// The audio source.
    pub audio: Audio,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        Self {
            sample_rate: 16_000,
            audio: Audio::Tone(440.0),
        }
    }
}

/// What the recorder reports, one JSON line each in `phone run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum RecordingEvent {
    /// A recorded call started: its audio is being captured.
    RecordingStarted {
        /// The call.
        call: CallId,
    },
    /// A recording is complete on the phone and waits in the upload queue.
    RecordingCaptured {
        /// The call.
        call: CallId,
        /// Its size.
        bytes: u64,
        /// Its length.
        duration_ms: u64,
        /// A crash cut it short: it holds what reached the disk.
        cut_short: bool,
    },
    /// A recording's upload state changed.
    Upload {
        /// The call.
        call: CallId,
        /// Where it stands.
        #[serde(flatten)]
        state: UploadState,
    },
    /// The server verified and stored the recording and referenced it in
    /// the customer's document; the phone's copy is removed.
    RecordingUploaded {
        /// The call.
        call: CallId,
        /// Bytes this phone sent for it, over every try.
        sent_bytes: u64,
    },
    /// The upload ended for good: deleted, or refused for a reason no retry
    /// can change.
    UploadEnded {
        /// The call.
        call: CallId,
        /// Why (`deleted`, or the refusal's code).
        outcome: String,
    },
    /// The server refused a try; the queue tries again later.
    UploadRefused {
        /// The call.
        call: CallId,
        /// The refusal's code.
        code: String,
        /// English.
        message: String,
        /// Japanese.
        message_ja: String,
    },
    /// The phone's network kind changed.
    Network {
        /// Wi-Fi, cellular or offline.
        kind: NetworkKind,
    },
    /// A recording could not be captured or read.
    RecordingFailed {
        /// The call.
        call: Option<CallId>,
        /// Why.
        reason: String,
    },
}

/// A capture in progress: its thread writes until told to stop.
struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Captured, CaptureError>>,
}

/// An upload stream in progress. Its news comes on a channel of its own, so
/// news of a stream given up (aborted, replaced) is dropped with it.
struct Flight {
    call: CallId,
    chunks: mpsc::UnboundedSender<(u64, u64)>,
    task: tokio::task::JoinHandle<()>,
    news: mpsc::UnboundedReceiver<StreamNews>,
}

/// What an upload stream's task reports.
pub type StreamNews = (CallId, UploadInput, Option<(String, String, String)>);

/// The phone's recorder and uploader.
pub struct Recorder {
    data_dir: PathBuf,
    tenant: TenantId,
    device: DeviceId,
    store: Store,
    options: RecorderOptions,
    queue: UploadQueue,
    saved: Vec<u8>,
    network: NetworkKind,
    running: HashMap<CallId, Running>,
    flight: Option<Flight>,
    /// The last step held an upload back (its call's events still unsent).
    held_back: bool,
    sent: HashMap<CallId, u64>,
    rng: SystemEntropy,
}

fn file_of(data_dir: &Path, call: &CallId) -> PathBuf {
    data_dir.join(RECORDINGS_DIR).join(format!("{call}.wav"))
}

/// Reads the network kind a phone's store holds (Wi-Fi when never set).
pub fn network_kind(store: &Store) -> Result<NetworkKind, ClientError> {
    Ok(match store.setting(NETWORK_KEY)?.as_deref() {
        Some(b"cellular") => NetworkKind::Cellular,
        Some(b"offline") => NetworkKind::Offline,
        _ => NetworkKind::Wifi,
    })
}

/// Sets the phone's network kind (what Android's connectivity callbacks
/// would say); a running `phone run` picks it up at once.
pub fn set_network_kind(data_dir: &Path, kind: NetworkKind) -> Result<(), ClientError> {
    let mut store = Store::open(&data_dir.join(DB_FILE))?;
    let name: &[u8] = match kind {
        NetworkKind::Wifi => b"wifi",
        NetworkKind::Cellular => b"cellular",
        NetworkKind::Offline => b"offline",
    };
    store.set_setting(NETWORK_KEY, name)?;
    Ok(())
}

/// The lower-case hex SHA-256 of a file, read in pieces.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        context.update(&buf[..n]);
    }
    Ok(context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl Recorder {
    /// The recorder of the phone at `data_dir`: its queue as saved, every
    /// recording a crash cut short repaired and queued.
    pub fn open(
        data_dir: &Path,
        tenant: TenantId,
        device: DeviceId,
        options: RecorderOptions,
    ) -> Result<(Self, Vec<RecordingEvent>), ClientError> {
        let store = Store::open(&data_dir.join(DB_FILE))?;
        let saved = store.setting(QUEUE_KEY)?.unwrap_or_default();
        let queue = UploadQueue::from_bytes((!saved.is_empty()).then_some(saved.as_slice()))
            .map_err(|e| ClientError::Protocol(format!("the upload queue does not read: {e}")))?;
        let network = network_kind(&store)?;
        let mut recorder = Self {
            data_dir: data_dir.to_owned(),
            tenant,
            device,
            store,
            options,
            queue,
            saved,
            network,
            running: HashMap::new(),
            flight: None,
            held_back: false,
            sent: HashMap::new(),
            rng: SystemEntropy,
        };
        let mut events = Vec::new();
        // Uploads start from `step`, once connected.
        recorder.queue.set_network(network);
        let recovered = crate::capture::recover(data_dir).map_err(|e| {
            ClientError::Protocol(format!("recordings cut short could not be read: {e}"))
        })?;
        for outcome in recovered {
            match outcome {
                Ok(captured) => events.extend(recorder.queue_captured(captured)?),
                Err(e) => events.push(RecordingEvent::RecordingFailed {
                    call: None,
                    reason: e.to_string(),
                }),
            }
        }
        events.extend(recorder.adopt_files()?);
        recorder.save()?;
        Ok((recorder, events))
    }

    /// Queues every finished file the queue does not hold: a crash between a
    /// capture's end (its file named) and the queue's save, or a file an
    /// outside recorder (a host's own) left for a recorded call. A file whose
    /// call's recording is stored or deleted already is removed; one for a
    /// call this phone does not know yet waits.
    fn adopt_files(&mut self) -> Result<Vec<RecordingEvent>, ClientError> {
        let dir = self.data_dir.join(RECORDINGS_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut events = Vec::new();
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "wav"))
            .collect();
        found.sort();
        for path in found {
            let Some(call) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| CallId::new(s).ok())
            else {
                continue;
            };
            if self.running.contains_key(&call) || self.queue.state(&call).is_some() {
                continue;
            }
            match self.store.recording_of_call(&self.tenant, &call)? {
                Some((state, _)) if state == "pending" => {
                    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    let (samples, rate) = hound::WavReader::open(&path)
                        .map(|r| (u64::from(r.duration()), r.spec().sample_rate))
                        .unwrap_or((0, 1));
                    events.extend(self.queue_captured(Captured {
                        call: call.to_string(),
                        path,
                        bytes,
                        sample_rate: rate,
                        samples,
                        cut_short: false,
                    })?);
                }
                Some(_) => {
                    // Stored on the server, or deleted: the phone's copy goes.
                    let _ = std::fs::remove_file(&path);
                }
                None => {}
            }
        }
        Ok(events)
    }

    /// Whether the phone still holds anything of the call's recording: a
    /// capture, a queued upload, its file, or its file set aside.
    fn holds(&self, call: &CallId) -> bool {
        let dir = self.data_dir.join(RECORDINGS_DIR);
        self.running.contains_key(call)
            || self.queue.state(call).is_some()
            || file_of(&self.data_dir, call).exists()
            || dir.join(REFUSED_DIR).join(format!("{call}.wav")).exists()
    }

    /// Each queued recording's upload state, oldest first.
    pub fn statuses(&self) -> Vec<callsync_core::UploadStatus> {
        self.queue.statuses()
    }

    /// The upload queue.
    pub fn queue(&self) -> &UploadQueue {
        &self.queue
    }

    /// Saves the queue when what it holds changed.
    fn save(&mut self) -> Result<(), ClientError> {
        let bytes = self.queue.to_bytes();
        if bytes != self.saved {
            self.store.set_setting(QUEUE_KEY, &bytes)?;
            self.saved = bytes;
        }
        Ok(())
    }

    fn queue_captured(&mut self, captured: Captured) -> Result<Vec<RecordingEvent>, ClientError> {
        let call = CallId::new(captured.call.clone()).map_err(callsync_core::CoreError::from)?;
        let hash = file_sha256(&captured.path)
            .map_err(|e| ClientError::Protocol(format!("a recording could not be read: {e}")))?;
        let mut events = vec![RecordingEvent::RecordingCaptured {
            call: call.clone(),
            bytes: captured.bytes,
            duration_ms: captured.duration_ms(),
            cut_short: captured.cut_short,
        }];
        // Uploads start from `step`, where the connection is known.
        self.queue.enqueue(call.clone(), hash, captured.bytes);
        self.save()?;
        if let Some(state) = self.queue.state(&call) {
            events.push(RecordingEvent::Upload { call, state });
        }
        Ok(events)
    }

    fn source(&self) -> Result<Box<dyn AudioSource + Send>, CaptureError> {
        Ok(match &self.options.audio {
            Audio::Tone(hertz) => Box::new(Tone::new(self.options.sample_rate, *hertz)),
            Audio::File(path) => Box::new(Looped::new(path)?),
        })
    }

    /// Starts and stops captures as the plan says, for the calls the phone's
    /// store holds now.
    pub fn plan(&mut self, now: Timestamp) -> Result<Vec<RecordingEvent>, ClientError> {
        let mut views = Vec::new();
        for (call, customer, deleted) in self.store.recording_candidates(&self.tenant)? {
            // A deletion long dealt with (no file, not queued) costs nothing:
            // the document is not even read.
            if deleted && !self.holds(&call) {
                continue;
            }
            let doc = match self
                .store
                .load(&self.tenant, &customer, automerge::ActorId::random())
            {
                Ok(doc) => doc,
                Err(_) => continue,
            };
            if let Some(view) = callsync_session::storage::LoadedDoc::doc(&doc).call(&call) {
                views.push(view);
            }
        }
        let capturing: Vec<CallId> = self.running.keys().cloned().collect();
        let data_dir = self.data_dir.clone();
        let queued: Vec<CallId> = self.queue.queued().iter().map(|q| q.call.clone()).collect();
        let captured = |call: &CallId| file_of(&data_dir, call).exists() || queued.contains(call);
        let CapturePlan {
            start,
            stop,
            deleted,
        } = capture_plan(&views, &self.device, &capturing, &captured);
        let mut events = Vec::new();
        for call in stop {
            if let Some(running) = self.running.remove(&call) {
                running.stop.store(true, Ordering::Relaxed);
                match running.thread.join() {
                    Ok(Ok(captured)) => events.extend(self.queue_captured(captured)?),
                    Ok(Err(e)) => events.push(RecordingEvent::RecordingFailed {
                        call: Some(call.clone()),
                        reason: e.to_string(),
                    }),
                    Err(_) => events.push(RecordingEvent::RecordingFailed {
                        call: Some(call.clone()),
                        reason: "the capture thread failed".to_owned(),
                    }),
                }
            }
        }
        for call in deleted {
            let file = file_of(&self.data_dir, &call);
            let aside = self
                .data_dir
                .join(RECORDINGS_DIR)
                .join(REFUSED_DIR)
                .join(format!("{call}.wav"));
            let queued = self.queue.state(&call).is_some();
            if !file.exists() && !aside.exists() && !queued {
                continue;
            }
            let commands = self.queue.handle(
                now,
                &mut self.rng,
                UploadInput::Deleted { call: call.clone() },
            );
            events.extend(self.carry_out(commands));
            // The phone's copy goes too (and one set aside): deleted means
            // gone everywhere.
            let _ = std::fs::remove_file(&file);
            let _ = std::fs::remove_file(
                self.data_dir
                    .join(RECORDINGS_DIR)
                    .join(REFUSED_DIR)
                    .join(format!("{call}.wav")),
            );
        }
        for call in start {
            match self.source().and_then(|source| {
                let capture = Capture::start(&self.data_dir, &call, self.options.sample_rate)?;
                Ok((capture, source))
            }) {
                Ok((capture, source)) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let flag = stop.clone();
                    let thread = std::thread::spawn(move || record_live(capture, source, &flag));
                    self.running.insert(call.clone(), Running { stop, thread });
                    events.push(RecordingEvent::RecordingStarted { call });
                }
                Err(e) => events.push(RecordingEvent::RecordingFailed {
                    call: Some(call),
                    reason: e.to_string(),
                }),
            }
        }
        events.extend(self.adopt_files()?);
        self.save()?;
        Ok(events)
    }

    /// Takes in the network kind the store holds; returns the event when it
    /// changed.
    pub fn network_changed(&mut self) -> Result<Vec<RecordingEvent>, ClientError> {
        let kind = network_kind(&self.store)?;
        if kind == self.network {
            return Ok(Vec::new());
        }
        self.network = kind;
        let commands = self.queue.set_network(kind);
        let mut events = vec![RecordingEvent::Network { kind }];
        events.extend(self.carry_out(commands));
        self.save()?;
        Ok(events)
    }

    /// The phone's network kind.
    pub fn network(&self) -> NetworkKind {
        self.network
    }

    /// When the queue next wants [`Self::step`] (a little later when the
    /// last step held an upload back until the call's events are sent).
    pub fn next_wake(&self) -> Option<Timestamp> {
        let at = self.queue.poll_timeout()?;
        Some(if self.held_back {
            at.max(crate::clock::now().plus_millis(HELD_BACK_LOOK_MS))
        } else {
            at
        })
    }

    /// Waits for news from the upload stream in progress (cancel-safe, for
    /// `select!`; never, while none is). A stream whose task ended without a
    /// last word counts as broken.
    pub async fn news(&mut self) -> Option<StreamNews> {
        match self.flight.as_mut() {
            Some(flight) => Some(
                flight
                    .news
                    .recv()
                    .await
                    .unwrap_or_else(|| (flight.call.clone(), UploadInput::Broken, None)),
            ),
            None => std::future::pending().await,
        }
    }

    /// Takes in news from the upload stream.
    pub fn handle_news(
        &mut self,
        now: Timestamp,
        (call, input, refusal): StreamNews,
        connection: Option<&quinn::Connection>,
    ) -> Result<Vec<RecordingEvent>, ClientError> {
        let mut events = Vec::new();
        if self.flight.as_ref().is_none_or(|f| f.call != call) {
            // News of a stream already given up (aborted, replaced).
            return Ok(events);
        }
        let ended = matches!(
            input,
            UploadInput::Broken | UploadInput::Refused { .. } | UploadInput::Stored { .. }
        );
        if let (UploadInput::Refused { code, .. }, Some((_, message, message_ja))) =
            (&input, &refusal)
            && !RecordingCode::parse(code).is_some_and(RecordingCode::is_final)
        {
            events.push(RecordingEvent::UploadRefused {
                call: call.clone(),
                code: code.clone(),
                message: message.clone(),
                message_ja: message_ja.clone(),
            });
        }
        if ended && let Some(flight) = self.flight.take() {
            flight.task.abort();
        }
        let before = self.queue.state(&call);
        let commands = self.queue.handle(now, &mut self.rng, input);
        events.extend(self.carry_out(commands));
        events.extend(self.start_flights(now, connection));
        let after = self.queue.state(&call);
        if after != before
            && let Some(state) = after
        {
            events.push(RecordingEvent::Upload { call, state });
        }
        self.save()?;
        Ok(events)
    }

    /// Runs what is due: an upload to start when the policy allows and a
    /// connection is up.
    pub fn step(
        &mut self,
        now: Timestamp,
        connection: Option<&quinn::Connection>,
    ) -> Result<Vec<RecordingEvent>, ClientError> {
        let events = self.start_flights(now, connection);
        self.save()?;
        Ok(events)
    }

    /// The connection went: the upload in progress is cut.
    pub fn disconnected(&mut self, now: Timestamp) -> Result<(), ClientError> {
        if let Some(flight) = self.flight.take() {
            flight.task.abort();
            self.queue.handle(now, &mut self.rng, UploadInput::Broken);
            self.save()?;
        }
        Ok(())
    }

    fn start_flights(
        &mut self,
        now: Timestamp,
        connection: Option<&quinn::Connection>,
    ) -> Vec<RecordingEvent> {
        let Some(connection) = connection else {
            return Vec::new();
        };
        if self.flight.is_some() {
            return Vec::new();
        }
        use callsync_store::ReplicationQueries;
        let unsent = self.store.outbox(&self.tenant).unwrap_or_default();
        let store = &self.store;
        let tenant = &self.tenant;
        let synced = |call: &CallId| {
            match store.known_customer_of_call(tenant, call) {
                Ok(Some(customer)) => !unsent.contains(&customer),
                // Not in this phone's store: the offer finds out it is gone.
                Ok(None) => true,
                Err(_) => false,
            }
        };
        let commands = self.queue.poll_when(now, &synced);
        self.held_back =
            commands.is_empty() && self.queue.poll_timeout().is_some_and(|at| at <= now);
        let mut events = Vec::new();
        for command in commands {
            match command {
                UploadCommand::Offer { call, hash, bytes } => {
                    let customer = match self.store.known_customer_of_call(&self.tenant, &call) {
                        Ok(found) => found,
                        Err(e) => {
                            // The phone's own storage failed: try later.
                            tracing::warn!(%call, error = %e, "a queued recording's call could not be read");
                            self.queue.withdraw();
                            continue;
                        }
                    };
                    let Some(customer) = customer else {
                        // The call is not in this phone's store any more:
                        // nothing can be offered for it.
                        let commands = self.queue.handle(
                            now,
                            &mut self.rng,
                            UploadInput::Refused {
                                call: call.clone(),
                                code: RecordingCode::NotFound.as_str().to_owned(),
                            },
                        );
                        events.extend(self.carry_out(commands));
                        continue;
                    };
                    let (chunks, orders) = mpsc::unbounded_channel();
                    let (news_sender, news) = mpsc::unbounded_channel();
                    let open = StreamOpen::Upload {
                        customer,
                        call: call.clone(),
                        sha256: hash,
                        bytes,
                    };
                    let task = tokio::spawn(upload_stream(
                        connection.clone(),
                        open,
                        file_of(&self.data_dir, &call),
                        orders,
                        news_sender,
                    ));
                    self.flight = Some(Flight {
                        call: call.clone(),
                        chunks,
                        task,
                        news,
                    });
                    if let Some(state) = self.queue.state(&call) {
                        events.push(RecordingEvent::Upload { call, state });
                    }
                }
                other => events.extend(self.carry_out(vec![other])),
            }
        }
        events
    }

    /// Carries out the queue's commands that need no connection: chunks to
    /// the stream in flight, aborts, and ends.
    fn carry_out(&mut self, commands: Vec<UploadCommand>) -> Vec<RecordingEvent> {
        let mut events = Vec::new();
        for command in commands {
            match command {
                UploadCommand::Offer { .. } => {
                    // A stream opens only in `start_flights`, with a
                    // connection: the offer is taken back, and made there.
                    self.queue.withdraw();
                }
                UploadCommand::Send { call, offset, len } => {
                    *self.sent.entry(call.clone()).or_default() += len;
                    if let Some(flight) = &self.flight
                        && flight.call == call
                    {
                        let _ = flight.chunks.send((offset, len));
                    }
                }
                UploadCommand::Abort { call } => {
                    if self.flight.as_ref().is_some_and(|f| f.call == call)
                        && let Some(flight) = self.flight.take()
                    {
                        flight.task.abort();
                    }
                }
                UploadCommand::Done { call, outcome } => {
                    let sent = self.sent.remove(&call).unwrap_or(0);
                    if outcome == "stored" {
                        // The server holds it, verified and referenced: the
                        // phone's copy is no longer needed. The queue is saved
                        // first, so a crash in between never leaves an entry
                        // whose file is gone.
                        if let Err(e) = self.save() {
                            tracing::warn!(%call, error = %e, "the upload queue could not be saved; the file stays");
                            continue;
                        }
                        let _ = std::fs::remove_file(file_of(&self.data_dir, &call));
                        events.push(RecordingEvent::RecordingUploaded {
                            call,
                            sent_bytes: sent,
                        });
                    } else {
                        // Refused for good (or deleted, already removed): the
                        // file is kept aside, never offered again.
                        let file = file_of(&self.data_dir, &call);
                        if outcome == "deleted" || outcome == RecordingCode::Deleted.as_str() {
                            let _ = std::fs::remove_file(&file);
                        } else if file.exists() {
                            let aside = self.data_dir.join(RECORDINGS_DIR).join(REFUSED_DIR);
                            let kept = std::fs::create_dir_all(&aside).and_then(|()| {
                                std::fs::rename(&file, aside.join(format!("{call}.wav")))
                            });
                            if let Err(e) = kept {
                                tracing::warn!(%call, error = %e, "a refused recording could not be set aside");
                            }
                        }
                        events.push(RecordingEvent::UploadEnded { call, outcome });
                    }
                }
            }
        }
        events
    }
}

/// Writes a call's audio as it comes (a tenth of a second at a time, at the
/// pace of a live call) until `stop` is set.
fn record_live(
    mut capture: Capture,
    mut source: Box<dyn AudioSource + Send>,
    stop: &AtomicBool,
) -> Result<Captured, CaptureError> {
    let rate = source.sample_rate();
    let mut buf = vec![0i16; (rate / 10) as usize];
    let started = std::time::Instant::now();
    let mut written: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = started.elapsed().as_millis() as u64 * u64::from(rate) / 1_000;
        while written + buf.len() as u64 <= due {
            let got = source.fill(&mut buf);
            capture.write(&buf[..got])?;
            written += buf.len() as u64;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    capture.finish()
}

/// A fixture WAV played in a loop (a call outlasts the fixture).
struct Looped {
    path: PathBuf,
    source: WavSource,
    rate: u32,
}

impl Looped {
    fn new(path: &Path) -> Result<Self, CaptureError> {
        let source = WavSource::open(path)?;
        let rate = source.sample_rate();
        Ok(Self {
            path: path.to_owned(),
            source,
            rate,
        })
    }
}

impl AudioSource for Looped {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn fill(&mut self, buf: &mut [i16]) -> usize {
        let mut filled = self.source.fill(buf);
        while filled < buf.len() {
            match WavSource::open(&self.path) {
                Ok(source) => self.source = source,
                Err(_) => break,
            }
            let more = self.source.fill(&mut buf[filled..]);
            if more == 0 {
                break;
            }
            filled += more;
        }
        filled
    }
}

/// One upload on a stream of its own: the offer, then chunks as the queue
/// releases them, read from the file; the server's answers go back as news.
async fn upload_stream(
    connection: quinn::Connection,
    open: StreamOpen,
    file: PathBuf,
    mut orders: mpsc::UnboundedReceiver<(u64, u64)>,
    news: mpsc::UnboundedSender<StreamNews>,
) {
    let StreamOpen::Upload { call, .. } = &open else {
        return;
    };
    let call = call.clone();
    let broken = |news: &mpsc::UnboundedSender<StreamNews>| {
        let _ = news.send((call.clone(), UploadInput::Broken, None));
    };
    let Ok((mut send, mut recv)) = connection.open_bi().await else {
        return broken(&news);
    };
    let Ok(frame) = stream::encode_stream_frame(&open) else {
        return broken(&news);
    };
    if write_frame(&mut send, &frame).await.is_err() {
        return broken(&news);
    }
    let reader_news = news.clone();
    let reader_call = call.clone();
    // Aborted with this task (the upload given up), not left reading.
    let reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let body = match read_frame_within(&mut recv, stream::MAX_OPEN_FRAME_BYTES).await {
                Ok(Some(body)) => body,
                _ => {
                    let _ = reader_news.send((reader_call.clone(), UploadInput::Broken, None));
                    return;
                }
            };
            let reply = match stream::decode_stream_frame::<StreamReply>(&body) {
                Ok(reply) => reply,
                Err(_) => {
                    let _ = reader_news.send((reader_call.clone(), UploadInput::Broken, None));
                    return;
                }
            };
            let call = reader_call.clone();
            let (input, refusal, last) = match reply {
                StreamReply::Held { held } => (UploadInput::Offered { call, held }, None, false),
                StreamReply::Acked { upto } => (UploadInput::Acked { call, upto }, None, false),
                StreamReply::Stored { .. } => (UploadInput::Stored { call }, None, true),
                StreamReply::Refused(body) => (
                    UploadInput::Refused {
                        call,
                        code: body.code.clone(),
                    },
                    Some((body.code, body.message, body.message_ja)),
                    true,
                ),
                StreamReply::Found { .. } => (UploadInput::Broken, None, true),
            };
            let _ = reader_news.send((reader_call.clone(), input, refusal));
            if last {
                return;
            }
        }
    }));
    // Opened at the first chunk: an offer the server answers `stored` (a
    // restart after it stored the recording) needs no file.
    let mut handle: Option<std::fs::File> = None;
    while let Some((offset, len)) = orders.recv().await {
        if handle.is_none() {
            match std::fs::File::open(&file) {
                Ok(opened) => handle = Some(opened),
                Err(e) => {
                    // The file is gone from the phone: no retry can send it.
                    drop(reader);
                    let code = RecordingCode::NotFound.as_str().to_owned();
                    let _ = news.send((
                        call.clone(),
                        UploadInput::Refused {
                            call: call.clone(),
                            code: code.clone(),
                        },
                        Some((
                            code,
                            format!("the recording's file is gone from the phone: {e}"),
                            "端末に録音ファイルがありません".to_owned(),
                        )),
                    ));
                    return;
                }
            }
        }
        let Some(handle) = handle.as_mut() else {
            break;
        };
        // Read straight into the frame, handed to QUIC without a copy.
        let mut frame = stream::begin_chunk(offset, len as usize);
        let read = handle
            .seek(SeekFrom::Start(offset))
            .and_then(|_| Read::by_ref(handle).take(len).read_to_end(&mut frame));
        let frame = match read {
            Ok(got) if got as u64 == len => stream::end_chunk(frame).ok(),
            _ => None,
        };
        let Some(frame) = frame else {
            drop(reader);
            return broken(&news);
        };
        if send.write_chunk(frame.into()).await.is_err() {
            // The reader reports the break.
            break;
        }
    }
    let mut reader = reader;
    let _ = (&mut reader.0).await;
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
