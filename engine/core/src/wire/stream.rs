//! The streams beside the sync stream: a recording's upload and download, each
//! on a bidirectional QUIC stream of its own, so bytes of audio never queue
//! behind (or ahead of) a call request or a sync.
//!
//! A device opens the stream on a connection that has joined; its first frame
//! is a [`StreamOpen`] (CBOR, at most [`MAX_OPEN_FRAME_BYTES`]). Then:
//!
//! - **upload**: the server answers [`StreamReply::Held`] (how much of these
//!   bytes it holds already: the upload resumes there), the device sends chunk
//!   frames ([`encode_chunk`]: the offset, then the bytes) in order, the server
//!   answers [`StreamReply::Acked`] as chunks are written to its staging area
//!   (a progress mark and the device's window; the device keeps its file until
//!   `stored`, and a later offer resumes from what the server says it holds), and
//!   [`StreamReply::Stored`] once the whole is verified, stored and referenced
//!   in the customer's document; or [`StreamReply::Refused`] at any point.
//! - **download**: the server answers [`StreamReply::Found`] (the recording,
//!   where it starts), then chunk frames up to the end, and finishes the
//!   stream; or [`StreamReply::Refused`].
//!
//! Frames are the sync stream's (a 4-byte big-endian length, then the body).

use serde::{Deserialize, Serialize};

use super::{ErrorBody, WireError, decode};
use crate::event::RecordingRef;
use crate::id::{CallId, CustomerId};

/// The largest first frame of a stream.
pub const MAX_OPEN_FRAME_BYTES: usize = 4 * 1024;
/// The most audio one chunk frame may carry.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;
/// The largest frame of a stream after its first: a chunk and its offset.
pub const MAX_STREAM_FRAME_BYTES: usize = MAX_CHUNK_BYTES + 8;

decode::tag_first_enum! {
tag = "type", remote = "StreamOpen", mirror = StreamOpenFields;
/// What a stream beside the sync stream is for: its first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StreamOpen {
    /// Upload the recording of `call`, `bytes` long, hashing to `sha256`.
    #[serde(rename_all = "camelCase")]
    Upload {
        /// The customer whose document holds the call.
        customer: CustomerId,
        /// The call it recorded.
        call: CallId,
        /// Lower-case hex SHA-256 of the whole file.
        sha256: String,
        /// The file's size.
        bytes: u64,
    },
    /// Download the recording of `call` from byte `offset` on.
    #[serde(rename_all = "camelCase")]
    Download {
        /// The call.
        call: CallId,
        /// Where to start (a resumed download: what the file already holds).
        offset: u64,
    },
}
}

decode::tag_first_enum! {
tag = "type", remote = "StreamReply", mirror = StreamReplyFields;
/// What the server says on a stream beside the sync stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StreamReply {
    /// Upload: the server holds the first `held` bytes already.
    Held {
        /// Bytes of this upload the server's staging area holds (0 for
        /// none): the device sends from there.
        held: u64,
    },
    /// Upload: the bytes up to `upto` are written to the staging area.
    Acked {
        /// Bytes confirmed.
        upto: u64,
    },
    /// Upload: verified, stored, and referenced in the customer's document.
    Stored {
        /// The reference written.
        recording: RecordingRef,
    },
    /// Download: the recording, and the offset the chunks start at.
    #[serde(rename_all = "camelCase")]
    Found {
        /// The recording.
        recording: RecordingRef,
        /// The customer whose document holds the call.
        customer: CustomerId,
        /// Where the chunks start.
        offset: u64,
    },
    /// Refused; the stream ends.
    Refused(ErrorBody),
}
}

/// Encodes a stream's first frame, or a reply, as a frame.
pub fn encode_stream_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![0; super::FRAME_HEADER_BYTES];
    ciborium::into_writer(value, &mut frame).map_err(|e| WireError::Encode(e.to_string()))?;
    finish_frame(frame, MAX_STREAM_FRAME_BYTES)
}

/// Decodes a stream's first frame or a reply from a frame body.
pub fn decode_stream_frame<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, WireError> {
    ciborium::from_reader(body).map_err(|e| WireError::Malformed(e.to_string()))
}

/// A chunk frame: `data` is the file's bytes from `offset` on.
pub fn encode_chunk(offset: u64, data: &[u8]) -> Result<Vec<u8>, WireError> {
    if data.len() > MAX_CHUNK_BYTES {
        return Err(WireError::FrameTooLarge {
            len: data.len(),
            max: MAX_CHUNK_BYTES,
        });
    }
    let mut frame = begin_chunk(offset, data.len());
    frame.extend_from_slice(data);
    end_chunk(frame)
}

/// A chunk frame begun: its header written and room for `len` bytes, which
/// the caller appends (a file's bytes read straight into the frame, not
/// copied twice) before [`end_chunk`].
pub fn begin_chunk(offset: u64, len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(super::FRAME_HEADER_BYTES + 8 + len.min(MAX_CHUNK_BYTES));
    frame.extend_from_slice(&[0; super::FRAME_HEADER_BYTES]);
    frame.extend_from_slice(&offset.to_be_bytes());
    frame
}

/// Ends a chunk frame [`begin_chunk`] began and the bytes appended to it.
pub fn end_chunk(frame: Vec<u8>) -> Result<Vec<u8>, WireError> {
    let data = frame.len().saturating_sub(super::FRAME_HEADER_BYTES + 8);
    if data > MAX_CHUNK_BYTES {
        return Err(WireError::FrameTooLarge {
            len: data,
            max: MAX_CHUNK_BYTES,
        });
    }
    finish_frame(frame, MAX_STREAM_FRAME_BYTES)
}

/// A chunk frame's offset and bytes (an empty chunk is malformed: it would
/// move nothing forward).
pub fn decode_chunk(body: &[u8]) -> Result<(u64, &[u8]), WireError> {
    if body.len() <= 8 {
        return Err(WireError::Malformed(
            "a chunk holds an offset and at least one byte".to_owned(),
        ));
    }
    let (offset, data) = body.split_at(8);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(offset);
    Ok((u64::from_be_bytes(bytes), data))
}

fn finish_frame(mut frame: Vec<u8>, max: usize) -> Result<Vec<u8>, WireError> {
    let body = frame.len() - super::FRAME_HEADER_BYTES;
    if body > max {
        return Err(WireError::FrameTooLarge { len: body, max });
    }
    let len = u32::try_from(body).map_err(|_| WireError::FrameTooLarge { len: body, max })?;
    frame[..super::FRAME_HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// Whether `sha256` is a lower-case hex SHA-256.
pub fn is_sha256_hex(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_replies_and_chunks_read_back() {
        let open = StreamOpen::Upload {
            customer: CustomerId::new("cus-1").unwrap(),
            call: CallId::new("call-1").unwrap(),
            sha256: "ab".repeat(32),
            bytes: 1_000,
        };
        let frame = encode_stream_frame(&open).unwrap();
        assert_eq!(
            decode_stream_frame::<StreamOpen>(&frame[4..]).unwrap(),
            open
        );
        let reply = StreamReply::Held { held: 512 };
        let frame = encode_stream_frame(&reply).unwrap();
        assert_eq!(
            decode_stream_frame::<StreamReply>(&frame[4..]).unwrap(),
            reply
        );
        let frame = encode_chunk(42, b"audio").unwrap();
        assert_eq!(&frame[..4], &13u32.to_be_bytes());
        assert_eq!(decode_chunk(&frame[4..]).unwrap(), (42, &b"audio"[..]));
        // A frame filled in place is the same frame.
        let mut begun = begin_chunk(42, 5);
        begun.extend_from_slice(b"audio");
        assert_eq!(end_chunk(begun).unwrap(), frame);
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert!(decode_chunk(&[0; 8]).is_err(), "no bytes after the offset");
        assert!(decode_chunk(&[1, 2]).is_err(), "no offset");
        assert!(encode_chunk(0, &vec![0; MAX_CHUNK_BYTES + 1]).is_err());
        let mut begun = begin_chunk(0, MAX_CHUNK_BYTES + 1);
        begun.resize(begun.len() + MAX_CHUNK_BYTES + 1, 0);
        assert!(end_chunk(begun).is_err(), "filled past the limit");
        assert!(decode_stream_frame::<StreamOpen>(b"\xa1\x64type\x64nope").is_err());
        assert!(decode_stream_frame::<StreamOpen>(&[0xff, 0x00]).is_err());
        assert!(is_sha256_hex(&"0f".repeat(32)));
        assert!(!is_sha256_hex(&"0F".repeat(32)), "upper case");
        assert!(!is_sha256_hex("00"), "short");
    }
}
