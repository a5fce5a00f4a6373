//! Helpers for the user-journey tests: run the real `callsync` binary on a data
//! directory, read its JSON, and fingerprint the database to prove a refused
//! action changed nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `callsync` binary of this build.
pub(crate) fn callsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_callsync"))
}

/// A data directory and the flags every command gets.
pub(crate) struct DataDir {
    /// Kept so the directory lives as long as the test.
    pub(crate) dir: tempfile::TempDir,
}

/// What one run of the binary gave.
#[derive(Debug)]
pub(crate) struct Run {
    /// Exit status code.
    pub(crate) code: i32,
    /// Standard output.
    pub(crate) stdout: String,
    /// Standard error.
    pub(crate) stderr: String,
}

impl Run {
    /// Standard output as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }

    /// Asserts success and returns the JSON.
    pub(crate) fn ok(&self) -> serde_json::Value {
        assert_eq!(
            self.code, 0,
            "command failed: {}{}",
            self.stdout, self.stderr
        );
        self.json()
    }

    /// Asserts a refusal with this error code: exit 1, one line on stderr, a typed
    /// JSON error whose Japanese text is Japanese. Returns the English message.
    pub(crate) fn refused(&self, code: &str) -> String {
        assert_eq!(
            self.code, 1,
            "expected a refusal, got: {}{}",
            self.stdout, self.stderr
        );
        assert_eq!(
            self.stderr.lines().count(),
            1,
            "one-line reason expected: {:?}",
            self.stderr
        );
        assert!(self.stderr.starts_with("error: "), "{}", self.stderr);
        let json = self.json();
        assert_eq!(json["error"]["code"], code, "{json}");
        // The Japanese text is Japanese (the UI shows it as is).
        if let Some(ja) = json["error"]["message_ja"].as_str() {
            assert!(
                ja.chars()
                    .any(|c| matches!(c, '\u{3040}'..='\u{30ff}' | '\u{4e00}'..='\u{9fff}')),
                "message_ja is not Japanese: {json}"
            );
        }
        json["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl DataDir {
    /// A fresh, empty data directory.
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `callsync --json --data DIR --now NOW ARGS…`.
    pub(crate) fn run_at(&self, now: &str, args: &[&str]) -> Run {
        let out: Output = Command::new(callsync_bin())
            .arg("--json")
            .arg("--data")
            .arg(self.path())
            .args(["--now", now])
            .args(args)
            .env_remove("CALLSYNC_USER")
            .env_remove("CALLSYNC_TENANT")
            .output()
            .expect("run callsync");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every row of every table, in a fixed order: equal fingerprints, equal data.
    pub(crate) fn fingerprint(&self) -> Vec<String> {
        let conn =
            rusqlite::Connection::open(self.path().join("callsync.sqlite")).expect("open db");
        let mut rows = Vec::new();
        for (table, order) in [
            ("documents", "tenant_id, customer_id"),
            ("snapshots", "tenant_id, customer_id"),
            ("chunks", "tenant_id, customer_id, seq"),
            ("calls", "tenant_id, call_id"),
            ("settings", "key"),
        ] {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
                .expect("query");
            let n = stmt.column_count();
            let mut q = stmt.query([]).expect("rows");
            while let Some(row) = q.next().expect("row") {
                let mut line = format!("{table}:");
                for i in 0..n {
                    let v: rusqlite::types::Value = row.get(i).expect("value");
                    line.push_str(&format!(" {v:?}"));
                }
                rows.push(line);
            }
        }
        rows
    }
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

/// The repository's fixtures directory, of the checkout under test: read at run
/// time, since a target directory shared between checkouts may hold a test
/// binary built from another one.
pub(crate) fn fixtures() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../fixtures")
}

/// A two-thread runtime for the journeys that drive QUIC clients in-process.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `GET path` on the server's page listener with `headers` (CRLF-ended lines):
/// the status line, the headers (lowercase) and the body's bytes.
pub(crate) fn http_get(page: &str, path: &str, headers: &str) -> (String, String, Vec<u8>) {
    use std::io::{Read, Write};
    let host = page
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = std::net::TcpStream::connect(&host).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(response[..split].to_vec()).unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head.as_str(), ""));
    let mut body = response[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = unchunk(&body);
    }
    (status.to_owned(), headers.to_ascii_lowercase(), body)
}

/// The payload of a chunked HTTP/1.1 body.
pub(crate) fn unchunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line]).unwrap().trim(), 16).unwrap();
        body = &body[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}
