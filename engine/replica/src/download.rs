//! Downloading a call's recording to a file, resumably, on a stream beside
//! the sync stream.
//!
//! Owns: the `.part` file a download grows (a cut download resumes at its
//! length), checking the whole against the recording's SHA-256 before it
//! takes its name, and the stream's half of `callsync_core::wire::stream`'s
//! download.
//! Does not own: who may read the recording (the server's hub decides).

use std::io::Write;
use std::path::{Path, PathBuf};

use callsync_core::wire::stream::{self, StreamOpen, StreamReply};
use callsync_core::{CallId, CustomerId, RecordingRef};
use callsync_net::framing::{read_frame_within, write_frame};

use crate::ClientError;
use crate::recorder::file_sha256;

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Downloaded {
    /// The call.
    pub call: CallId,
    /// Its customer.
    pub customer: CustomerId,
    /// The recording.
    pub recording: RecordingRef,
    /// The file written.
    pub path: PathBuf,
    /// Where this download started (what an earlier, cut one had written).
    pub resumed_at: u64,
}

fn part_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

fn io(e: std::io::Error) -> ClientError {
    ClientError::Protocol(format!("the download could not be written: {e}"))
}

/// Downloads the recording of `call` into `path` over `connection` (a joined
/// one), resuming a cut download from its `.part` file. The file takes its
/// name only once its SHA-256 is the recording's; a `.part` that does not
/// match is removed, so the next try starts again from zero.
pub async fn download_recording(
    connection: &quinn::Connection,
    call: &CallId,
    path: &Path,
) -> Result<Downloaded, ClientError> {
    let part = part_of(path);
    let resumed_at = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| ClientError::Net(callsync_net::NetError::Read(e.to_string())))?;
    let open = StreamOpen::Download {
        call: call.clone(),
        offset: resumed_at,
    };
    let frame = stream::encode_stream_frame(&open).map_err(callsync_net::NetError::from)?;
    write_frame(&mut send, &frame).await?;
    let _ = send.finish();
    let first = read_frame_within(&mut recv, stream::MAX_OPEN_FRAME_BYTES)
        .await?
        .ok_or_else(|| ClientError::Protocol("the server ended the download".to_owned()))?;
    let (recording, customer) = match stream::decode_stream_frame::<StreamReply>(&first)
        .map_err(callsync_net::NetError::from)?
    {
        StreamReply::Found {
            recording,
            customer,
            offset,
        } if offset == resumed_at => (recording, customer),
        StreamReply::Refused(body) => return Err(ClientError::Refused(body)),
        other => {
            return Err(ClientError::Protocol(format!(
                "unexpected answer to a download: {other:?}"
            )));
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(io)?;
    let mut at = resumed_at;
    while at < recording.size {
        let body = read_frame_within(&mut recv, stream::MAX_STREAM_FRAME_BYTES)
            .await?
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "the download was cut at {at} of {} bytes; run it again to resume",
                    recording.size
                ))
            })?;
        let (offset, data) = stream::decode_chunk(&body).map_err(callsync_net::NetError::from)?;
        if offset != at || at + data.len() as u64 > recording.size {
            return Err(ClientError::Protocol(format!(
                "a chunk at {offset} does not follow {at}"
            )));
        }
        file.write_all(data).map_err(io)?;
        at += data.len() as u64;
    }
    file.sync_all().map_err(io)?;
    drop(file);
    let hash = file_sha256(&part).map_err(io)?;
    if hash != recording.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(ClientError::Protocol(
            "the downloaded bytes do not match the recording's SHA-256; run it again".to_owned(),
        ));
    }
    std::fs::rename(&part, path).map_err(io)?;
    Ok(Downloaded {
        call: call.clone(),
        customer,
        recording,
        path: path.to_owned(),
        resumed_at,
    })
}
