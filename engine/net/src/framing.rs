//! One [`Message`] per frame on a QUIC stream.
//!
//! A frame is the core's 4-byte big-endian length and CBOR body
//! ([`callsync_core::wire`]); the length is checked against the limit before the
//! body is read, so a peer announcing a huge frame costs nothing.

use callsync_core::wire::{self, FRAME_HEADER_BYTES, Message};

use crate::NetError;

/// Reads the next message; `None` when the peer finished the stream cleanly
/// between frames.
pub async fn read_message(recv: &mut quinn::RecvStream) -> Result<Option<Message>, NetError> {
    Ok(read_message_sized(recv).await?.map(|(message, _)| message))
}

/// Like [`read_message`], also returning the frame's size on the wire (header
/// included), for accounting.
pub async fn read_message_sized(
    recv: &mut quinn::RecvStream,
) -> Result<Option<(Message, usize)>, NetError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(NetError::Read(e.to_string())),
    }
    let len = wire::frame_body_len(header)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| NetError::Read(e.to_string()))?;
    Ok(Some((wire::decode_body(&body)?, FRAME_HEADER_BYTES + len)))
}

/// Writes one message as a frame.
pub async fn write_message(
    send: &mut quinn::SendStream,
    message: &Message,
) -> Result<(), NetError> {
    let frame = wire::encode_frame(message)?;
    write_frame(send, &frame).await
}

/// Writes an already encoded frame (the server encodes a fan-out once).
pub async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), NetError> {
    send.write_all(frame)
        .await
        .map_err(|e| NetError::Write(e.to_string()))
}
