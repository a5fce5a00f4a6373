//! Playing recordings in the page: the signed, short-lived links that
//! `recording-link` answers and the HTTP range requests an `<audio>` element
//! makes with one.
//!
//! Owns: the link's form (`/api/recordings/{tenant}/{sha256}/{expires}/{mac}`,
//! the tenant in hex so that no id character means anything in a URL,
//! an HMAC-SHA256 under a key the server keeps in its store, so links outlive
//! a restart), checking a link (its MAC in constant time, then its expiry on
//! the server's clock), and answering `GET` with the whole recording or one
//! byte range (`206`, `416` past the end), streamed from the blob store in
//! pieces.
//! Does not own: who may play what (the hub decides before a link is signed,
//! as for a download stream: `recordings::link`) or the bytes (`callsync-blobs`).
//!
//! Why a signed link: an `<audio>` element fetches by URL, sends no header a
//! page could add, and the page holds no cookie (its session lives in the
//! engine, over WebTransport). A link signed for one recording and valid for
//! [`LINK_TTL`] lets the browser's own player seek with range requests while
//! the server decides nothing at request time but "is this signature mine and
//! fresh". A link that leaks plays that one recording until it expires; a
//! deleted recording stops playing once its bytes are swept.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use callsync_blobs::{BlobError, BlobHash, BlobStore};
use callsync_core::wire::RecordingLink;
use callsync_core::{RecordingRef, TenantId, Timestamp};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use ring::hmac;

/// How long a link plays: long enough to listen to a long call with pauses,
/// short enough that a copied link is soon worthless. The page asks again
/// when a link has expired.
pub const LINK_TTL: Duration = Duration::from_secs(15 * 60);
/// Bytes read from the blob store per piece of a response.
const PIECE: u64 = 256 * 1024;
/// The setting holding the links' key.
pub(crate) const KEY_SETTING: &str = "recording-link-key";
/// What a link's MAC covers before its fields, so that no other signature
/// the key might ever make can pass for a link.
const DOMAIN: &[u8] = b"callsync recording link v1\0";

/// Signs and checks links, and serves what they name.
pub(crate) struct Playback {
    key: hmac::Key,
    blobs: Arc<BlobStore>,
}

/// Why a link does not play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkError {
    /// The link is not one this server signed (or was changed).
    Forged,
    /// The link was signed but its time is up.
    Expired,
}

impl Playback {
    pub(crate) fn new(secret: &[u8], blobs: Arc<BlobStore>) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            blobs,
        }
    }

    fn message(tenant: &str, sha256: &str, expires: &str) -> Vec<u8> {
        let mut message = DOMAIN.to_vec();
        for field in [tenant, sha256, expires] {
            message.extend_from_slice(field.as_bytes());
            message.push(0);
        }
        message
    }

    /// A link to play `recording` of `tenant`, valid from `now` for [`LINK_TTL`].
    pub(crate) fn link(
        &self,
        tenant: &TenantId,
        recording: RecordingRef,
        now: Timestamp,
    ) -> RecordingLink {
        let expires_at = now.plus_millis(LINK_TTL.as_millis() as i64);
        let expires = expires_at.as_millis().to_string();
        let sha256 = recording.sha256.to_ascii_lowercase();
        let tenant_hex = hex(tenant.as_str().as_bytes());
        let tag = hmac::sign(&self.key, &Self::message(&tenant_hex, &sha256, &expires));
        RecordingLink {
            path: format!(
                "/api/recordings/{}/{sha256}/{expires}/{}",
                hex(tenant.as_str().as_bytes()),
                hex(tag.as_ref())
            ),
            expires_at,
            recording,
        }
    }

    /// Checks a link's fields (as in its path) at `now`: the recording it names.
    pub(crate) fn check(
        &self,
        tenant: &str,
        sha256: &str,
        expires: &str,
        mac: &str,
        now: Timestamp,
    ) -> Result<(TenantId, BlobHash), LinkError> {
        let tag = unhex(mac).ok_or(LinkError::Forged)?;
        hmac::verify(&self.key, &Self::message(tenant, sha256, expires), &tag)
            .map_err(|_| LinkError::Forged)?;
        // Signed by this server, so the fields are as it wrote them; parsed
        // all the same, since the key could one day sign something else.
        let expires: i64 = expires.parse().map_err(|_| LinkError::Forged)?;
        if now.as_millis() >= expires {
            return Err(LinkError::Expired);
        }
        let tenant = unhex(tenant)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|name| TenantId::new(name).ok())
            .ok_or(LinkError::Forged)?;
        let hash = BlobHash::from_hex(sha256).ok_or(LinkError::Forged)?;
        Ok((tenant, hash))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex only (one spelling per link), at most 256 digits.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The longest `Range` header read: one range of two 20-digit numbers fits
/// many times over. A longer one, or one naming several ranges, is ignored
/// (the whole recording is sent), so no header makes the parser compare
/// thousands of ranges with each other.
const MAX_RANGE_HEADER: usize = 100;

/// The bytes a `Range` header asks of a recording of `size` bytes: `Ok(None)`
/// for the whole (no header, or one this server ignores: another unit,
/// malformed, several ranges, too long), `Err` when it lies past the end.
fn asked_range(header: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(text) = header.and_then(|h| h.to_str().ok()) else {
        return Ok(None);
    };
    if text.len() > MAX_RANGE_HEADER || text.contains(',') {
        return Ok(None);
    }
    let Ok(parsed) = http_range_header::parse_range_header(text) else {
        return Ok(None);
    };
    match parsed.validate(size) {
        Ok(ranges) => Ok(ranges.first().map(|r| (*r.start(), *r.end() + 1))),
        // A suffix longer than the recording asks for all of it (RFC 9110).
        Err(_) if text.trim().starts_with("bytes=-") && size > 0 => Ok(Some((0, size))),
        Err(_) => Err(()),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

/// `GET /api/recordings/{tenant}/{sha256}/{expires}/{mac}`: the recording, or
/// the byte range asked for.
pub(crate) async fn play(
    State(playback): State<Arc<Playback>>,
    Path((tenant, sha256, expires, mac)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let (tenant, hash) = match playback.check(&tenant, &sha256, &expires, &mac, crate::clock::now())
    {
        Ok(named) => named,
        Err(LinkError::Forged) => {
            return plain(StatusCode::FORBIDDEN, "this link is not valid\n");
        }
        Err(LinkError::Expired) => {
            return plain(
                StatusCode::FORBIDDEN,
                "this link has expired: ask for the recording again\n",
            );
        }
    };
    let size = match playback.blobs.size(&tenant, &hash).await {
        Ok(size) => size,
        Err(BlobError::NotFound) => {
            return plain(StatusCode::NOT_FOUND, "the recording is not stored\n");
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading a recording's size failed");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the recording cannot be read now\n",
            );
        }
    };
    let Ok(range) = asked_range(headers.get(header::RANGE), size) else {
        return unsatisfiable(size);
    };
    let (start, end) = range.unwrap_or((0, size));
    let mut response = Response::new(body(playback.clone(), tenant, hash, start..end));
    let set = response.headers_mut();
    set.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    set.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Kept nowhere, the browser's cache included: a deleted recording must
    // not outlive its bytes on the server in a shared PC's disk cache. The
    // player asks again by range for what it needs.
    set.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    set.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(value) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end.saturating_sub(1)))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    response
}

fn unsatisfiable(size: u64) -> Response {
    let mut response = plain(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "the range is not within the recording\n",
    );
    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    response
}

/// The bytes `range` of a recording, read in pieces as the client takes them.
fn body(
    playback: Arc<Playback>,
    tenant: TenantId,
    hash: BlobHash,
    range: std::ops::Range<u64>,
) -> Body {
    let pieces = futures::stream::unfold(range.start, move |at| {
        let (playback, tenant) = (playback.clone(), tenant.clone());
        let end = range.end;
        async move {
            if at >= end {
                return None;
            }
            let until = (at + PIECE).min(end);
            match playback.blobs.read(&tenant, &hash, at..until).await {
                Ok(bytes) => Some((Ok(bytes), until)),
                // Gone or unreadable mid-response (deleted meanwhile): the
                // response ends short, which the client sees as an error.
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), end)),
            }
        }
    });
    Body::from_stream(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn playback() -> (tempfile::TempDir, Playback) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::local(dir.path(), callsync_blobs::BlobLimits::default()).unwrap();
        (dir, Playback::new(&[7; 32], Arc::new(blobs)))
    }

    fn recording() -> RecordingRef {
        RecordingRef {
            sha256: "ab".repeat(32),
            size: 10,
            duration_ms: 1,
            format: "wav/pcm16".to_owned(),
        }
    }

    fn fields(path: &str) -> Vec<String> {
        path.trim_start_matches("/api/recordings/")
            .split('/')
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_link_plays_until_it_expires_and_not_a_moment_after() {
        let (_dir, playback) = playback();
        let tenant = TenantId::new("acme").unwrap();
        let now = Timestamp::from_millis(1_000_000);
        let link = playback.link(&tenant, recording(), now);
        assert_eq!(
            link.expires_at,
            now.plus_millis(LINK_TTL.as_millis() as i64)
        );
        let f = fields(&link.path);
        let (named, hash) = playback.check(&f[0], &f[1], &f[2], &f[3], now).unwrap();
        assert_eq!(named, tenant);
        assert_eq!(hash.hex(), "ab".repeat(32));
        let last = link.expires_at.plus_millis(-1);
        assert!(playback.check(&f[0], &f[1], &f[2], &f[3], last).is_ok());
        assert_eq!(
            playback.check(&f[0], &f[1], &f[2], &f[3], link.expires_at),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn a_changed_field_or_another_servers_key_is_forged() {
        let (_dir, playback) = playback();
        let tenant = TenantId::new("acme").unwrap();
        let now = Timestamp::from_millis(1_000_000);
        let f = fields(&playback.link(&tenant, recording(), now).path);
        let later = (f[2].parse::<i64>().unwrap() + 3_600_000).to_string();
        let other_sha = "cd".repeat(32);
        let mut flipped = f[3].clone();
        flipped.replace_range(0..1, if flipped.starts_with('0') { "1" } else { "0" });
        for (tenant, sha, expires, mac) in [
            ("6f74686572", f[1].as_str(), f[2].as_str(), f[3].as_str()),
            (&f[0], other_sha.as_str(), &f[2], &f[3]),
            (&f[0], &f[1], later.as_str(), &f[3]),
            (&f[0], &f[1], &f[2], flipped.as_str()),
            (&f[0], &f[1], &f[2], "zz"),
            (&f[0], &f[1], &f[2], ""),
            (&f[0], &f[1], &f[2], &f[3][..10]),
        ] {
            assert_eq!(
                playback.check(tenant, sha, expires, mac, now),
                Err(LinkError::Forged),
                "{tenant} {sha} {expires} {mac}"
            );
        }
        let (_other_dir, other) = self::playback();
        let other = Playback::new(&[8; 32], other.blobs.clone());
        assert_eq!(
            other.check(&f[0], &f[1], &f[2], &f[3], now),
            Err(LinkError::Forged)
        );
    }

    #[test]
    fn a_range_is_read_strictly_and_anything_else_gets_the_whole_recording() {
        let ask = |text: &str| asked_range(Some(&HeaderValue::from_str(text).unwrap()), 1_000);
        assert_eq!(asked_range(None, 1_000), Ok(None));
        assert_eq!(ask("bytes=0-"), Ok(Some((0, 1_000))));
        assert_eq!(ask("bytes=100-199"), Ok(Some((100, 200))));
        assert_eq!(ask("bytes=-44"), Ok(Some((956, 1_000))));
        assert_eq!(
            ask("bytes=-5000"),
            Ok(Some((0, 1_000))),
            "a suffix past the start"
        );
        assert_eq!(ask("bytes=1000-"), Err(()));
        assert_eq!(ask("bytes=2000-3000"), Err(()));
        for ignored in [
            "items=0-10",
            "bytes=a-b",
            "bytes=0-1,5-6",
            &format!("bytes=0-{}", "9".repeat(200)),
        ] {
            assert_eq!(ask(ignored), Ok(None), "{ignored}");
        }
        // Thousands of ranges are never handed to the parser.
        let many = (0..30_000)
            .map(|i| format!("{}-{}", i * 3, i * 3 + 1))
            .collect::<Vec<_>>();
        assert_eq!(ask(&format!("bytes={}", many.join(","))), Ok(None));
    }

    #[test]
    fn hex_has_one_spelling() {
        assert_eq!(unhex("0aff"), Some(vec![0x0a, 0xff]));
        for other in ["+a", "0A", "0g", "abc", " 0a"] {
            assert_eq!(unhex(other), None, "{other}");
        }
    }

    #[test]
    fn a_tenant_whose_name_means_something_in_a_url_still_gets_a_working_link() {
        let (_dir, playback) = playback();
        let now = Timestamp::from_millis(1_000_000);
        for name in ["a%2Fb", "q?x", "h#x", "..", "テナント"] {
            let tenant = TenantId::new(name).unwrap();
            let link = playback.link(&tenant, recording(), now);
            let f = fields(&link.path);
            assert_eq!(f.len(), 4, "{}", link.path);
            assert!(
                link.path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'_'),
                "{}",
                link.path
            );
            let (named, _) = playback.check(&f[0], &f[1], &f[2], &f[3], now).unwrap();
            assert_eq!(named, tenant);
        }
    }
}
