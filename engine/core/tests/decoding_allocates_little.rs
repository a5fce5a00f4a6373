//! What decoding a frame may allocate, counted by the allocator: a frame built
//! to amplify (one byte of CBOR per item, items the protocol has no use for)
//! costs the reader about its own size, never the tens of bytes per item a
//! buffered untyped tree would. One test in this binary, so no other test's
//! allocations share the count.

use std::alloc::System;

use callsync_core::wire::{self, Message};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes `decode_body` allocated in all (an upper bound of what it held at once).
fn allocated_while_decoding(body: &[u8]) -> (Result<Message, wire::WireError>, usize) {
    let region = Region::new(ALLOCATOR);
    let decoded = wire::decode_body(body);
    let allocated = region.change().bytes_allocated;
    (decoded, allocated)
}

/// A CBOR text string.
fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A CBOR item head of major type `major` with argument `n`.
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
    }
}

/// An array of `n` empty arrays: `n + 5` bytes on the wire.
fn empty_arrays(out: &mut Vec<u8>, n: usize) {
    head(out, 4, n as u64);
    out.extend(std::iter::repeat_n(0x80, n));
}

/// A `login` whose protocol versions are `n` empty strings.
fn login_with_versions(n: usize) -> Vec<u8> {
    let mut body = Vec::new();
    head(&mut body, 5, 5);
    text(&mut body, "type");
    text(&mut body, "login");
    text(&mut body, "supportedProtocolVersions");
    head(&mut body, 4, n as u64);
    body.extend(std::iter::repeat_n(0x60, n));
    text(&mut body, "email");
    text(&mut body, "a@b.example");
    text(&mut body, "password");
    text(&mut body, "secret");
    text(&mut body, "device");
    head(&mut body, 5, 3);
    text(&mut body, "id");
    text(&mut body, "phone-1");
    text(&mut body, "kind");
    text(&mut body, "phone");
    text(&mut body, "actor");
    text(&mut body, "00");
    body
}

/// A `sync` carrying one field the protocol does not know, holding `n` empty
/// arrays.
fn sync_with_unknown_field(n: usize) -> Vec<u8> {
    let mut body = Vec::new();
    head(&mut body, 5, 4);
    text(&mut body, "type");
    text(&mut body, "sync");
    text(&mut body, "documentId");
    text(&mut body, "c-1");
    text(&mut body, "data");
    head(&mut body, 2, 1);
    body.push(0x42);
    text(&mut body, "padding");
    empty_arrays(&mut body, n);
    body
}

#[test]
fn frames_built_to_amplify_cost_the_reader_about_their_own_size() {
    let items = 1 << 20;
    // A login whose list of versions is a million empty strings: refused while
    // decoding, after the first few.
    let login = login_with_versions(items);
    let (decoded, allocated) = allocated_while_decoding(&login);
    assert!(
        matches!(decoded, Err(wire::WireError::Malformed(ref e)) if e.contains("at most")),
        "{decoded:?}"
    );
    assert!(
        allocated < 64 * 1024,
        "decoding a {} byte login allocated {allocated} bytes",
        login.len()
    );

    // A sync with a million empty arrays in a field nobody reads: skipped, not
    // kept, and the message still decodes.
    let sync = sync_with_unknown_field(items);
    let (decoded, allocated) = allocated_while_decoding(&sync);
    assert!(
        matches!(&decoded, Ok(Message::Sync { data, .. }) if data == &[0x42]),
        "{decoded:?}"
    );
    assert!(
        allocated < 64 * 1024,
        "decoding a {} byte sync allocated {allocated} bytes",
        sync.len()
    );

    // An honest sync carrying a large Automerge message: about its own size.
    let data = vec![7u8; 4 << 20];
    let frame = wire::encode_frame(&Message::Sync {
        document_id: callsync_core::CustomerId::new("c-1").unwrap(),
        data: data.clone(),
    })
    .unwrap();
    let body = &frame[wire::FRAME_HEADER_BYTES..];
    let (decoded, allocated) = allocated_while_decoding(body);
    assert!(matches!(&decoded, Ok(Message::Sync { data: d, .. }) if d == &data));
    drop(decoded);
    assert!(
        allocated < 3 * body.len(),
        "decoding a {} byte sync allocated {allocated} bytes",
        body.len()
    );
}
