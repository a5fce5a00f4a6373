//! One [`Message`] per frame on a byte stream.
//!
//! A frame is the core's 4-byte big-endian length and CBOR body
//! ([`callsync_core::wire`]); the length is checked against the limit before the
//! body is read, so a peer announcing a huge frame costs nothing. The functions
//! take any tokio byte stream, so a native QUIC stream and a WebTransport stream
//! (a browser's) carry the same frames through the same code.

use callsync_core::wire::{self, FRAME_HEADER_BYTES, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::NetError;

/// Reads the next message; `None` when the peer finished the stream cleanly
/// between frames.
pub async fn read_message<R: AsyncRead + Unpin>(recv: &mut R) -> Result<Option<Message>, NetError> {
    Ok(read_message_sized(recv).await?.map(|(message, _)| message))
}

/// [`read_message`] for a frame of at most `max` body bytes (e.g.
/// [`wire::MAX_FIRST_FRAME_BYTES`] before the peer has authenticated).
pub async fn read_message_within<R: AsyncRead + Unpin>(
    recv: &mut R,
    max: usize,
) -> Result<Option<Message>, NetError> {
    match read_frame_within(recv, max).await? {
        Some(body) => Ok(Some(wire::decode_body(&body)?)),
        None => Ok(None),
    }
}

/// Like [`read_message`], also returning the frame's size on the wire (header
/// included), for accounting.
pub async fn read_message_sized<R: AsyncRead + Unpin>(
    recv: &mut R,
) -> Result<Option<(Message, usize)>, NetError> {
    match read_frame_within(recv, wire::MAX_FRAME_BYTES).await? {
        Some(body) => Ok(Some((
            wire::decode_body(&body)?,
            FRAME_HEADER_BYTES + body.len(),
        ))),
        None => Ok(None),
    }
}

/// Reads the next frame's body, undecoded, refusing a length over `max` before
/// allocating; `None` when the peer finished the stream cleanly between frames.
/// For a reader that decodes elsewhere (a large frame off the async workers).
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    recv: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, NetError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < header.len() {
        let read = recv
            .read(&mut header[filled..])
            .await
            .map_err(|e| NetError::Read(e.to_string()))?;
        if read == 0 {
            // The stream ended: cleanly between frames, or in the middle of a header.
            return if filled == 0 {
                Ok(None)
            } else {
                Err(NetError::Read("the stream ended inside a frame".to_owned()))
            };
        }
        filled += read;
    }
    let len = wire::frame_body_len_within(header, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| NetError::Read(e.to_string()))?;
    Ok(Some(body))
}

/// Writes one message as a frame.
pub async fn write_message<W: AsyncWrite + Unpin>(
    send: &mut W,
    message: &Message,
) -> Result<(), NetError> {
    let frame = wire::encode_frame(message)?;
    write_frame(send, &frame).await
}

/// Writes an already encoded frame (the server encodes a fan-out once).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    send: &mut W,
    frame: &[u8],
) -> Result<(), NetError> {
    send.write_all(frame)
        .await
        .map_err(|e| NetError::Write(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_round_trips_and_a_clean_end_reads_as_none() {
        let message = Message::Leave {
            sender_id: "desk-1".to_owned(),
        };
        let mut bytes = Vec::new();
        write_message(&mut bytes, &message).await.unwrap();
        let mut reader = bytes.as_slice();
        let (read, size) = read_message_sized(&mut reader).await.unwrap().unwrap();
        assert_eq!(read, message);
        assert_eq!(size, bytes.len());
        assert!(read_message(&mut reader).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_over_the_given_limit_is_refused_before_its_body_is_read() {
        let message = Message::Leave {
            sender_id: "x".repeat(64),
        };
        let mut bytes = Vec::new();
        write_message(&mut bytes, &message).await.unwrap();
        let body = bytes.len() - FRAME_HEADER_BYTES;
        let mut reader = &bytes[..FRAME_HEADER_BYTES];
        assert!(matches!(
            read_message_within(&mut reader, body - 1).await,
            Err(NetError::Wire(wire::WireError::FrameTooLarge { .. }))
        ));
        let mut reader = bytes.as_slice();
        assert_eq!(
            read_message_within(&mut reader, body).await.unwrap(),
            Some(message)
        );
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_header_or_body_is_an_error() {
        let mut bytes = Vec::new();
        write_message(
            &mut bytes,
            &Message::Leave {
                sender_id: "desk-1".to_owned(),
            },
        )
        .await
        .unwrap();
        for cut in [2, bytes.len() - 1] {
            let mut reader = &bytes[..cut];
            assert!(matches!(
                read_message(&mut reader).await,
                Err(NetError::Read(_))
            ));
        }
    }
}
