//! Capturing a recorded call on the phone: a WAV file in the data directory.
//!
//! Owns: writing mono 16-bit PCM (8 or 16 kHz) with `hound` while a recorded
//! call runs, under a `.part` name until the call ends; bringing the header up
//! to date and syncing the file to disk every second of audio, so a phone that
//! crashes mid-call keeps a playable file of all but the last second; repairing
//! the header of a file a crash left behind ([`recover`]); and the audio source,
//! which is pluggable ([`AudioSource`]: a fixture WAV or a generated tone stand in
//! for the microphone here).
//! Does not own: whether a call is recorded (the call's `recording` switch), the
//! upload queue, or the recording's reference in the customer document.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use callsync_core::CallId;

/// The sample rates a recording may have.
pub const SAMPLE_RATES: [u32; 2] = [8_000, 16_000];

/// Where recordings live under a data directory.
pub const RECORDINGS_DIR: &str = "recordings";

/// The suffix of a recording still being captured (or cut short by a crash).
const PART_SUFFIX: &str = ".wav.part";

/// Why a capture could not be made or read. Nothing half-written is ever
/// presented as a finished recording.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Not one of [`SAMPLE_RATES`].
    #[error("a recording is 8,000 or 16,000 samples a second, not {0}")]
    SampleRate(u32),
    /// A file that is not a WAV this module wrote (no RIFF/WAVE header, no
    /// `fmt ` or `data` chunk, or not mono 16-bit PCM).
    #[error("{path}: not a recording ({reason})")]
    NotARecording {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The WAV encoder refused.
    #[error("WAV: {0}")]
    Wav(#[from] hound::Error),
    /// The disk refused.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where audio comes from while a call is recorded: the microphone on a real
/// phone; a fixture WAV or a generated tone here.
pub trait AudioSource {
    /// Samples per second.
    fn sample_rate(&self) -> u32;
    /// Fills `buf` with the next samples; returns how many it wrote (fewer than
    /// `buf.len()` only when the source has ended).
    fn fill(&mut self, buf: &mut [i16]) -> usize;
}

/// A sine tone, for tests and the demo: never ends.
#[derive(Debug, Clone)]
pub struct Tone {
    rate: u32,
    hertz: f64,
    position: u64,
}

impl Tone {
    /// A tone of `hertz` sampled at `rate`.
    pub fn new(rate: u32, hertz: f64) -> Self {
        Self {
            rate,
            hertz,
            position: 0,
        }
    }
}

impl AudioSource for Tone {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn fill(&mut self, buf: &mut [i16]) -> usize {
        for sample in buf.iter_mut() {
            let t = self.position as f64 / f64::from(self.rate);
            *sample = (f64::from(i16::MAX / 4)
                * (2.0 * std::f64::consts::PI * self.hertz * t).sin()) as i16;
            self.position += 1;
        }
        buf.len()
    }
}

/// A WAV file's samples, played once.
#[derive(Debug, Clone)]
pub struct WavSource {
    rate: u32,
    samples: Vec<i16>,
    position: usize,
}

impl WavSource {
    /// Reads a mono 16-bit WAV file.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let mut reader = hound::WavReader::open(path)?;
        let spec = reader.spec();
        if spec.channels != 1
            || spec.bits_per_sample != 16
            || spec.sample_format != hound::SampleFormat::Int
        {
            return Err(CaptureError::NotARecording {
                path: path.to_owned(),
                reason: "not mono 16-bit PCM",
            });
        }
        let samples = reader.samples::<i16>().collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            rate: spec.sample_rate,
            samples,
            position: 0,
        })
    }
}

impl AudioSource for WavSource {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn fill(&mut self, buf: &mut [i16]) -> usize {
        let rest = &self.samples[self.position.min(self.samples.len())..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.position += n;
        n
    }
}

/// A finished recording on the phone's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The call.
    pub call: String,
    /// The WAV file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Samples per second.
    pub sample_rate: u32,
    /// How many samples it holds.
    pub samples: u64,
    /// Whether a crash cut it short (recovered by [`recover`]).
    pub cut_short: bool,
}

impl Captured {
    /// Its length in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.samples * 1_000 / u64::from(self.sample_rate.max(1))
    }
}

/// A recording being captured.
pub struct Capture {
    writer: hound::WavWriter<BufWriter<File>>,
    /// A second handle on the file, to sync it to disk after each flush.
    file: File,
    part: PathBuf,
    done: PathBuf,
    call: String,
    sample_rate: u32,
    samples: u64,
    since_sync: u64,
}

fn recordings(data_dir: &Path) -> PathBuf {
    data_dir.join(RECORDINGS_DIR)
}

impl Capture {
    /// Starts recording `call` at `sample_rate` under `data_dir`.
    pub fn start(data_dir: &Path, call: &CallId, sample_rate: u32) -> Result<Self, CaptureError> {
        if !SAMPLE_RATES.contains(&sample_rate) {
            return Err(CaptureError::SampleRate(sample_rate));
        }
        let dir = recordings(data_dir);
        fs::create_dir_all(&dir)?;
        let part = dir.join(format!("{call}{PART_SUFFIX}"));
        let done = dir.join(format!("{call}.wav"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&part)?;
        let handle = file.try_clone()?;
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::new(BufWriter::new(file), spec)?;
        // The header reaches the disk before any audio, so even a crash in the
        // first second leaves a file `recover` can mend.
        writer.flush()?;
        handle.sync_data()?;
        Ok(Self {
            writer,
            file: handle,
            part,
            done,
            call: call.to_string(),
            sample_rate,
            samples: 0,
            since_sync: 0,
        })
    }

    /// Appends samples; every second of audio the header is brought up to date
    /// and the file synced, so a crash loses at most the last second.
    pub fn write(&mut self, samples: &[i16]) -> Result<(), CaptureError> {
        for &sample in samples {
            self.writer.write_sample(sample)?;
        }
        self.samples += samples.len() as u64;
        self.since_sync += samples.len() as u64;
        if self.since_sync >= u64::from(self.sample_rate) {
            self.writer.flush()?;
            self.file.sync_data()?;
            self.since_sync = 0;
        }
        Ok(())
    }

    /// Reads `source` until it ends or `max_samples` were captured.
    pub fn record(
        &mut self,
        source: &mut dyn AudioSource,
        max_samples: u64,
    ) -> Result<(), CaptureError> {
        let mut buf = vec![0i16; (self.sample_rate / 10) as usize];
        while self.samples < max_samples {
            let want = buf.len().min((max_samples - self.samples) as usize);
            let got = source.fill(&mut buf[..want]);
            self.write(&buf[..got])?;
            if got < want {
                break;
            }
        }
        Ok(())
    }

    /// Ends the recording: the header final, the file synced, then renamed from
    /// its `.part` name (and the directory synced), so a finished name always
    /// holds a whole file.
    pub fn finish(self) -> Result<Captured, CaptureError> {
        let Self {
            writer,
            file,
            part,
            done,
            call,
            sample_rate,
            samples,
            ..
        } = self;
        writer.finalize()?;
        file.sync_all()?;
        fs::rename(&part, &done)?;
        sync_dir(done.parent())?;
        Ok(Captured {
            call,
            bytes: fs::metadata(&done)?.len(),
            path: done,
            sample_rate,
            samples,
            cut_short: false,
        })
    }
}

fn sync_dir(dir: Option<&Path>) -> Result<(), CaptureError> {
    if let Some(dir) = dir {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// At start-up: every recording a crash cut short (still under its `.part`
/// name) gets a header that matches what reached the disk, is cut to whole
/// samples, and takes its finished name, reported with `cut_short`. A file that
/// is not a recording this module wrote is left where it is and reported as an
/// error beside the others; nothing else is touched.
pub fn recover(data_dir: &Path) -> Result<Vec<Result<Captured, CaptureError>>, CaptureError> {
    let dir = recordings(data_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut parts: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(PART_SUFFIX))
        .collect();
    parts.sort();
    Ok(parts.into_iter().map(|part| repair(&part)).collect())
}

/// Mends one `.part` file's header and gives it its finished name.
fn repair(part: &Path) -> Result<Captured, CaptureError> {
    let not = |reason| CaptureError::NotARecording {
        path: part.to_owned(),
        reason,
    };
    let mut file = OpenOptions::new().read(true).write(true).open(part)?;
    let len = file.metadata()?.len();
    let mut head = vec![0u8; len.min(4_096) as usize];
    file.read_exact(&mut head)?;
    if head.len() < 12 || &head[..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Err(not("no RIFF/WAVE header"));
    }
    // Walk the chunks up to `data` (the last chunk: hound writes it last).
    let mut at = 12usize;
    let mut format: Option<(u16, u16, u32)> = None;
    let data_start = loop {
        let Some(header) = head.get(at..at + 8) else {
            return Err(not("no data chunk"));
        };
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        match &header[..4] {
            b"fmt " => {
                let fmt = head
                    .get(at + 8..at + 24)
                    .ok_or_else(|| not("a short fmt chunk"))?;
                let tag = u16::from_le_bytes([fmt[0], fmt[1]]);
                let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
                let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
                let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
                if tag != 1 || bits != 16 {
                    return Err(not("not 16-bit PCM"));
                }
                format = Some((channels, bits, rate));
            }
            b"data" => break at + 8,
            _ => {}
        }
        at = at
            .checked_add(8 + size + size % 2)
            .ok_or_else(|| not("a chunk size past the file"))?;
    };
    let Some((1, _, sample_rate)) = format else {
        return Err(not("not mono, or no fmt chunk before the data"));
    };
    if !SAMPLE_RATES.contains(&sample_rate) {
        return Err(not("a sample rate a recording never has"));
    }
    // Whatever reached the disk after the data chunk's header is audio; an odd
    // last byte is half a sample, dropped.
    let data_len = (len.saturating_sub(data_start as u64)) & !1;
    let data_len32 = u32::try_from(data_len).map_err(|_| not("larger than a WAV can be"))?;
    let riff_len = u32::try_from(data_start as u64 + data_len - 8)
        .map_err(|_| not("larger than a WAV can be"))?;
    file.set_len(data_start as u64 + data_len)?;
    file.seek(SeekFrom::Start(4))?;
    file.write_all(&riff_len.to_le_bytes())?;
    file.seek(SeekFrom::Start(data_start as u64 - 4))?;
    file.write_all(&data_len32.to_le_bytes())?;
    file.sync_all()?;
    drop(file);
    let name = part.to_string_lossy();
    let done = PathBuf::from(format!("{}.wav", &name[..name.len() - PART_SUFFIX.len()]));
    fs::rename(part, &done)?;
    sync_dir(done.parent())?;
    let call = done
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Captured {
        call,
        bytes: fs::metadata(&done)?.len(),
        path: done,
        sample_rate,
        samples: data_len / 2,
        cut_short: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> CallId {
        CallId::new(id).unwrap()
    }

    fn read(path: &Path) -> (hound::WavSpec, Vec<i16>) {
        let mut reader = hound::WavReader::open(path).unwrap();
        let samples = reader.samples::<i16>().map(Result::unwrap).collect();
        (reader.spec(), samples)
    }

    #[test]
    fn a_finished_recording_is_a_whole_mono_16_bit_wav_under_its_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut capture = Capture::start(dir.path(), &call("call-1"), 8_000).unwrap();
        capture
            .record(&mut Tone::new(8_000, 440.0), 3 * 8_000)
            .unwrap();
        let captured = capture.finish().unwrap();
        assert_eq!(captured.samples, 24_000);
        assert_eq!(captured.duration_ms(), 3_000);
        assert!(!captured.cut_short);
        assert_eq!(captured.path, dir.path().join("recordings/call-1.wav"));
        assert!(!dir.path().join("recordings/call-1.wav.part").exists());
        let (spec, samples) = read(&captured.path);
        assert_eq!(
            (spec.channels, spec.bits_per_sample, spec.sample_rate),
            (1, 16, 8_000)
        );
        assert_eq!(samples.len(), 24_000);
        assert_eq!(captured.bytes, 44 + 48_000);
    }

    #[test]
    fn a_wav_source_plays_once_and_the_capture_stops_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = dir.path().join("mic.wav");
        let mut capture = Capture::start(dir.path(), &call("fixture"), 16_000).unwrap();
        capture
            .record(&mut Tone::new(16_000, 300.0), 16_000)
            .unwrap();
        fs::copy(capture.finish().unwrap().path, &fixture).unwrap();

        let mut source = WavSource::open(&fixture).unwrap();
        assert_eq!(source.sample_rate(), 16_000);
        let mut capture = Capture::start(dir.path(), &call("call-2"), 16_000).unwrap();
        capture.record(&mut source, 10 * 16_000).unwrap();
        let captured = capture.finish().unwrap();
        assert_eq!(
            captured.samples, 16_000,
            "the source ended after one second"
        );
        assert_eq!(read(&captured.path).1, read(&fixture).1);
    }

    #[test]
    fn a_recording_cut_short_by_a_crash_is_repaired_and_keeps_all_but_the_last_second() {
        let dir = tempfile::tempdir().unwrap();
        let mut capture = Capture::start(dir.path(), &call("call-3"), 8_000).unwrap();
        capture
            .record(&mut Tone::new(8_000, 440.0), 2 * 8_000 + 4_000)
            .unwrap();
        // The process dies: nothing after the last sync is flushed, no header
        // is finalized. A torn write leaves half a sample at the end.
        std::mem::forget(capture);
        let part = dir.path().join("recordings/call-3.wav.part");
        let mut file = OpenOptions::new().append(true).open(&part).unwrap();
        file.write_all(&[0x7f]).unwrap();
        drop(file);

        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.len(), 1);
        let captured = recovered.into_iter().next().unwrap().unwrap();
        assert!(captured.cut_short);
        assert_eq!(captured.call, "call-3");
        assert!(!part.exists());
        let (spec, samples) = read(&captured.path);
        assert_eq!(spec.sample_rate, 8_000);
        assert!(
            samples.len() >= 2 * 8_000,
            "every synced second is kept: {}",
            samples.len()
        );
        assert_eq!(samples.len() as u64, captured.samples);
        // A second start-up finds nothing more to do.
        assert!(recover(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_crash_before_the_first_sync_leaves_a_short_playable_file() {
        let dir = tempfile::tempdir().unwrap();
        let capture = Capture::start(dir.path(), &call("call-4"), 16_000).unwrap();
        std::mem::forget(capture);
        let captured = recover(dir.path()).unwrap().remove(0).unwrap();
        assert_eq!(captured.samples, 0);
        assert_eq!(read(&captured.path).1.len(), 0);
    }

    #[test]
    fn what_is_not_a_recording_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Capture::start(dir.path(), &call("call-5"), 44_100),
            Err(CaptureError::SampleRate(44_100))
        ));
        let recordings = dir.path().join(RECORDINGS_DIR);
        fs::create_dir_all(&recordings).unwrap();
        let garbage = recordings.join("call-6.wav.part");
        fs::write(&garbage, b"not a wav file at all").unwrap();
        let stereo = recordings.join("call-7.wav.part");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&stereo, spec).unwrap();
        writer.write_sample(1i16).unwrap();
        writer.write_sample(2i16).unwrap();
        writer.finalize().unwrap();
        let before = (fs::read(&garbage).unwrap(), fs::read(&stereo).unwrap());

        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.len(), 2);
        for outcome in &recovered {
            assert!(
                matches!(outcome, Err(CaptureError::NotARecording { .. })),
                "{outcome:?}"
            );
        }
        assert_eq!(
            (fs::read(&garbage).unwrap(), fs::read(&stereo).unwrap()),
            before,
            "nothing was changed"
        );
        assert!(WavSource::open(&stereo).is_err());
    }
}
