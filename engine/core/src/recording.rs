//! Recordings as the protocol speaks of them: why an upload or a download is
//! refused, and which refusals end an upload for good.
//!
//! Owns: [`RecordingCode`], the one list of recording refusal codes that the
//! server's blob store and upload handler produce and every device's upload
//! queue matches on (never on code strings), with each code's words in both
//! languages and whether retrying could ever help; and [`UploadStatus`], what
//! a phone says of each recording it still holds (the phone shows it, and
//! the server relays it to the user's other devices so a page shows it too).
//! Does not own: the bytes (the server's `callsync-blobs`, the phone's capture)
//! or the queue (`callsync_session::device::uploads`).

use serde::{Deserialize, Serialize};

use crate::id::CallId;
use crate::time::Timestamp;

/// A recording's upload while the phone still holds it, as the screens show it.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum UploadState {
    /// Queued; the phone is not on Wi-Fi (uploads run on Wi-Fi only).
    WaitingForWifi,
    /// Queued on Wi-Fi: waiting for its turn, or for its call to reach the
    /// server first.
    Queued,
    /// Queued; waiting to try again (after a failure, or a full quota).
    WaitingToRetry {
        /// When (the phone's corrected clock).
        at: Timestamp,
    },
    /// Uploading: this share of it is on the server.
    Uploading {
        /// 0–100.
        percent: u8,
    },
}

/// One recording a phone still holds, and where its upload stands.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStatus {
    /// The call it recorded.
    pub call: CallId,
    /// Where its upload stands.
    #[serde(flatten)]
    #[cfg_attr(feature = "typescript", ts(flatten))]
    pub state: UploadState,
}

/// Most recordings one phone's status names (a phone holding more says the
/// oldest ones).
pub const MAX_UPLOAD_STATUSES: usize = 64;

/// Why the server refused a recording's upload or download.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordingCode {
    /// The bytes do not hash to the SHA-256 announced (a chunk was corrupted on
    /// the way): the upload starts again from zero.
    HashMismatch,
    /// Not a mono 16-bit PCM WAV.
    NotWav,
    /// Larger than a recording may be.
    TooLarge,
    /// Longer than a recording may last.
    TooLong,
    /// The tenant's storage for recordings is full.
    QuotaFull,
    /// No such recording, or not one this member may reach (another tenant's
    /// call, a call this phone did not dial, a call recorded with the switch
    /// off, a customer the member may not see).
    NotFound,
    /// The recording was deleted: it is never uploaded or played again.
    Deleted,
    /// The server does not hold the call's start yet (its sync is on the way,
    /// on the other stream): the upload is tried again.
    NotStarted,
    /// A chunk that does not start where the upload has reached.
    OffsetMismatch,
    /// More uploads in progress for the tenant than it may have at once.
    TooManyUploads,
    /// The server could not store or read the bytes (its disk, its object
    /// store): try again later.
    StoreFailed,
}

impl RecordingCode {
    /// Every code, for tests and tables.
    pub const ALL: [Self; 11] = [
        Self::HashMismatch,
        Self::NotWav,
        Self::TooLarge,
        Self::TooLong,
        Self::QuotaFull,
        Self::NotFound,
        Self::Deleted,
        Self::NotStarted,
        Self::OffsetMismatch,
        Self::TooManyUploads,
        Self::StoreFailed,
    ];

    /// The kebab-case code on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HashMismatch => "recording-hash-mismatch",
            Self::NotWav => "recording-not-wav",
            Self::TooLarge => "recording-too-large",
            Self::TooLong => "recording-too-long",
            Self::QuotaFull => "recording-quota-full",
            Self::NotFound => "recording-not-found",
            Self::Deleted => "recording-deleted",
            Self::NotStarted => "recording-call-not-started",
            Self::OffsetMismatch => "upload-offset-mismatch",
            Self::TooManyUploads => "too-many-uploads",
            Self::StoreFailed => "recording-store-failed",
        }
    }

    /// The code for its wire spelling.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// Whether the recording, as it is, will never be accepted: the upload
    /// ends (the phone keeps the file and says why). Every other refusal
    /// waits and tries again.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            Self::NotWav | Self::TooLarge | Self::TooLong | Self::NotFound | Self::Deleted
        )
    }

    /// What it means, in English and in Japanese, for the screens.
    pub const fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::HashMismatch => (
                "The recording arrived damaged; it is sent again.",
                "録音データが破損して届きました。もう一度送信します",
            ),
            Self::NotWav => (
                "The recording is not a WAV file.",
                "録音ファイルの形式が正しくありません（WAV ではありません）",
            ),
            Self::TooLarge => ("The recording is too large.", "録音ファイルが大きすぎます"),
            Self::TooLong => ("The recording is too long.", "録音が長すぎます"),
            Self::QuotaFull => (
                "The storage for recordings is full.",
                "録音の保存容量の上限に達しています",
            ),
            Self::NotFound => ("No such recording.", "録音が見つかりません"),
            Self::Deleted => ("The recording was deleted.", "録音は削除されています"),
            Self::NotStarted => (
                "The server does not have the call's start yet; the upload is tried again.",
                "サーバーにコールの開始がまだ届いていません。後でもう一度アップロードします",
            ),
            Self::OffsetMismatch => (
                "The upload is out of step; it resumes where the server is.",
                "アップロードの位置が一致しません。サーバーの受信位置から再開します",
            ),
            Self::TooManyUploads => (
                "Too many uploads at once; it is tried again later.",
                "同時に進行中のアップロードが多すぎます。後で再試行します",
            ),
            Self::StoreFailed => (
                "The server could not store the recording; it is tried again later.",
                "サーバーで録音を保存できませんでした。後で再試行します",
            ),
        }
    }
}

impl std::fmt::Display for RecordingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_and_only_what_can_never_pass_is_final() {
        for code in RecordingCode::ALL {
            assert_eq!(RecordingCode::parse(code.as_str()), Some(code));
            let (en, ja) = code.words();
            assert!(!en.is_empty() && !ja.is_empty());
        }
        assert_eq!(RecordingCode::parse("recording-unknown"), None);
        let final_codes: Vec<_> = RecordingCode::ALL
            .into_iter()
            .filter(|c| c.is_final())
            .collect();
        assert_eq!(
            final_codes,
            [
                RecordingCode::NotWav,
                RecordingCode::TooLarge,
                RecordingCode::TooLong,
                RecordingCode::NotFound,
                RecordingCode::Deleted
            ]
        );
    }
}
