//! Keeping a device connected: reconnect with capped exponential backoff and
//! jitter, apply what arrives, push what local commands write.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::ClientError;
use crate::client::{ClientEvent, SyncClient};

/// How [`run`] behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// First wait after a failed connection.
    pub backoff_min: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// How often to look for changes written by local commands.
    pub poll: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            poll: Duration::from_millis(20),
        }
    }
}

/// The wait before attempt `attempt` (0-based): see
/// [`callsync_session::client::backoff`]; the jitter comes from the system's
/// randomness.
pub fn backoff(options: &RunOptions, attempt: u32) -> Duration {
    let mut byte = [0u8; 2];
    let unit = match SystemRandom::new().fill(&mut byte) {
        Ok(()) => f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX),
        Err(_) => 1.0,
    };
    callsync_session::client::backoff(options.backoff_min, options.backoff_max, attempt, unit)
}

/// Stays connected until `shutdown` resolves or the session is refused for good
/// (an expired or revoked session, a revoked contract: logging in again is the
/// only way on). Calls `on_event` for everything worth telling.
pub async fn run(
    data_dir: &Path,
    options: &RunOptions,
    mut on_event: impl FnMut(&ClientEvent),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    tokio::pin!(shutdown);
    let mut attempt = 0u32;
    loop {
        let connected = tokio::select! {
            c = SyncClient::connect(data_dir) => c,
            () = &mut shutdown => return Ok(()),
        };
        let mut client = match connected {
            Ok((client, events)) => {
                attempt = 0;
                events.iter().for_each(&mut on_event);
                client
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                on_event(&ClientEvent::Disconnected {
                    reason: e.to_string(),
                    retry_at: None,
                });
                let wait = backoff(options, attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    () = &mut shutdown => return Ok(()),
                }
            }
        };
        let mut poll = tokio::time::interval(options.poll);
        let ended = loop {
            let message = tokio::select! {
                m = client.recv() => m,
                _ = poll.tick() => {
                    match client.local_changes() {
                        Ok(true) => match client.push_local().await {
                            Ok(()) => continue,
                            Err(e) => break e,
                        },
                        Ok(false) => continue,
                        Err(e) => break e,
                    }
                }
                () = &mut shutdown => {
                    client.leave().await;
                    return Ok(());
                }
            };
            match message {
                Ok(message) => match client.handle_arrived(message).await {
                    Ok(events) => events.iter().for_each(&mut on_event),
                    Err(e) => break e,
                },
                Err(e) => break e,
            }
        };
        if ended.is_fatal() {
            client.abort();
            return Err(ended);
        }
        on_event(&ClientEvent::Disconnected {
            reason: ended.to_string(),
            retry_at: None,
        });
        client.abort();
        let wait = backoff(options, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}
