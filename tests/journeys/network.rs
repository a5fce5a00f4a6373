//! Helpers for the networked journeys: a real `callsync serve` process, devices
//! logged in through the real binary, and `phone run` as a background process
//! whose JSON event lines the test reads.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Run, callsync_bin};

/// The first tenant's owner.
pub(crate) const OWNER: &str = "owner@acme.example";
/// A rep of the first tenant.
pub(crate) const REP: &str = "rep@acme.example";
/// Every test account's password.
pub(crate) const PASSWORD: &str = "correct horse battery";
/// A number of the customer the journeys call.
pub(crate) const NUMBER: &str = "03-1234-5678";

fn output(out: std::process::Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `callsync --json --data DIR ARGS…` with the test password in the
/// environment.
pub(crate) fn callsync(data: &Path, args: &[&str]) -> Run {
    callsync_with(data, args, PASSWORD)
}

/// Runs `callsync --json --data DIR ARGS…` with `password` in the environment.
pub(crate) fn callsync_with(data: &Path, args: &[&str], password: &str) -> Run {
    callsync_env(data, args, &[("CALLSYNC_PASSWORD", password)])
}

/// Runs `callsync --json --data DIR ARGS…` with the test password and `env` in
/// the environment.
pub(crate) fn callsync_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    output(
        Command::new(callsync_bin())
            .arg("--json")
            .arg("--data")
            .arg(data)
            .args(args)
            .env("CALLSYNC_PASSWORD", PASSWORD)
            .env("CALLSYNC_NEW_PASSWORD", PASSWORD)
            .env_remove("CALLSYNC_USER")
            .env_remove("CALLSYNC_TENANT")
            // Refusals are in English unless a test asks for Japanese.
            .env_remove("LC_ALL")
            .env_remove("LC_MESSAGES")
            .env_remove("LANG")
            .envs(env.iter().copied())
            .output()
            .expect("run callsync"),
    )
}

/// A running `callsync serve`.
pub(crate) struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub(crate) addr: String,
    /// Its certificate's fingerprint.
    pub(crate) fingerprint: String,
    /// The page's address (`http://host:port/`).
    pub(crate) page: String,
    data: PathBuf,
    extra: Vec<String>,
    serve: Vec<String>,
}

impl ServerProcess {
    /// Starts a server on `data` listening on `addr`, with extra global flags and
    /// extra `serve` flags.
    pub(crate) fn start(data: &Path, addr: &str, global: &[&str], serve: &[&str]) -> Self {
        let mut child = Command::new(callsync_bin())
            .arg("--json")
            .arg("--data")
            .arg(data)
            .args(["--tenant", "acme"])
            .args(global)
            .args(["serve", "--listen", addr])
            .args(serve)
            .env("CALLSYNC_PASSWORD", PASSWORD)
            .stdout(Stdio::piped())
            // CALLSYNC_TEST_SERVER_LOG=1 shows the servers' logs when debugging a test.
            .stderr(if std::env::var_os("CALLSYNC_TEST_SERVER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start callsync serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("server's first line");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("server did not start ({e}): {line:?}"));
        Self {
            child,
            addr: v["listening"].as_str().expect("address").to_owned(),
            fingerprint: v["fingerprint"].as_str().expect("fingerprint").to_owned(),
            page: v["page"].as_str().expect("page").to_owned(),
            data: data.to_path_buf(),
            extra: global.iter().map(|s| s.to_string()).collect(),
            serve: serve.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Logs `dir` in to this server as a `kind` ("desk" or "phone") of `email`.
    pub(crate) fn login(&self, dir: &Path, kind: &str, email: &str) -> Run {
        callsync(
            dir,
            &[
                kind,
                "login",
                "--server",
                &self.addr,
                "--fingerprint",
                &self.fingerprint,
                "--email",
                email,
            ],
        )
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to end (after a kill from elsewhere).
    pub(crate) fn reap(&mut self) {
        let _ = self.child.wait();
    }

    /// The server's database file.
    pub(crate) fn db(&self) -> PathBuf {
        self.data.join("callsync.sqlite")
    }

    /// Stops it with SIGTERM and waits for a clean exit.
    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait for server");
        assert!(status.success(), "server exited with {status}");
    }

    /// Starts it again on the same address, data directory and flags (the same
    /// `--init-owner` included: bootstrapping is done, so it is ignored).
    pub(crate) fn restart(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let serve: Vec<&str> = self.serve.iter().map(String::as_str).collect();
        let again = Self::start(&self.data, &self.addr, &extra, &serve);
        assert_eq!(
            again.fingerprint, self.fingerprint,
            "the certificate is kept"
        );
        *self = again;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `phone run`, with its event lines.
pub(crate) struct PhoneRun {
    child: Child,
    events: Receiver<Value>,
    /// Every event seen so far.
    pub(crate) seen: Vec<Value>,
}

impl PhoneRun {
    /// Starts `callsync phone run` on `data`.
    pub(crate) fn start(data: &Path) -> Self {
        Self::start_with(data, &[])
    }

    /// Starts `callsync phone run` on `data` with extra environment variables.
    pub(crate) fn start_with(data: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_full(data, &[], env)
    }

    /// Starts `callsync phone run ARGS` on `data` (e.g. `--network cellular`).
    pub(crate) fn start_args(data: &Path, args: &[&str]) -> Self {
        Self::start_full(data, args, &[])
    }

    fn start_full(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(callsync_bin())
            .arg("--data")
            .arg(data)
            .args(["phone", "run"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            // CALLSYNC_TEST_PHONE_LOG=1 shows the phones' logs when debugging a test.
            .stderr(if std::env::var_os("CALLSYNC_TEST_PHONE_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start phone run");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Self {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for an event matching `what` (seen before or arriving within 20 s).
    pub(crate) fn wait_for(&mut self, what: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(Duration::from_secs(20), what)
    }

    /// Waits for an event matching `what`, seen before or arriving within `limit`.
    pub(crate) fn wait_for_within(
        &mut self,
        limit: Duration,
        what: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| what(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if what(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    panic!("no matching event; saw {:#?}", self.seen)
                }
            }
        }
    }

    /// How many events seen so far match `what`.
    pub(crate) fn count(&self, what: impl Fn(&Value) -> bool) -> usize {
        self.seen.iter().filter(|v| what(v)).count()
    }

    /// Waits until `n` events matching `what` have been seen.
    pub(crate) fn wait_count(&mut self, what: impl Fn(&Value) -> bool, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.count(&what) < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => panic!("fewer than {n} matching events; saw {:#?}", self.seen),
            }
        }
    }

    /// Stops the phone's sync (SIGTERM), as when it loses its connection.
    pub(crate) fn stop(mut self) -> Vec<Value> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        while let Ok(v) = self.events.try_recv() {
            self.seen.push(v);
        }
        std::mem::take(&mut self.seen)
    }

    /// The exit of a run that stops by itself (a refused session).
    pub(crate) fn wait_exit(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "phone run did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PhoneRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with one tenant (`acme`: its owner and a rep holding the contract),
/// and data directories for devices.
pub(crate) struct World {
    /// Keeps the directories alive.
    pub(crate) root: tempfile::TempDir,
    /// The server.
    pub(crate) server: ServerProcess,
    /// The owner's desk (for admin commands).
    pub(crate) admin_desk: PathBuf,
}

impl World {
    /// Starts a server (with extra global flags such as `--start-limit-secs 2`)
    /// and adds the rep.
    pub(crate) fn start(extra: &[&str]) -> Self {
        Self::start_serving(extra, &[])
    }

    /// [`World::start`] with extra `serve` flags (e.g. a recording quota).
    pub(crate) fn start_serving(extra: &[&str], serve: &[&str]) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let mut serve_flags = vec!["--init-owner", OWNER];
        serve_flags.extend_from_slice(serve);
        let server = ServerProcess::start(
            &root.path().join("server"),
            "127.0.0.1:0",
            extra,
            &serve_flags,
        );
        let world = Self {
            admin_desk: root.path().join("admin-desk"),
            root,
            server,
        };
        world.login(&world.admin_desk, "desk", OWNER).ok();
        callsync(
            &world.admin_desk,
            &["admin", "add-user", REP, "--role", "user", "--contract"],
        )
        .ok();
        world
    }

    /// A data directory under the world's root.
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Logs `dir` in as a `kind` ("desk" or "phone") of `email`.
    pub(crate) fn login(&self, dir: &Path, kind: &str, email: &str) -> Run {
        self.login_as(dir, kind, email, None)
    }

    /// Logs in with a chosen device id.
    pub(crate) fn login_as(
        &self,
        dir: &Path,
        kind: &str,
        email: &str,
        device: Option<&str>,
    ) -> Run {
        let mut args = vec![
            kind,
            "login",
            "--server",
            &self.server.addr,
            "--fingerprint",
            &self.server.fingerprint,
            "--email",
            email,
        ];
        if let Some(d) = device {
            args.extend(["--device-id", d]);
        }
        callsync(dir, &args)
    }

    /// Adds `tenant` with `owner` as its owner (the operator's command).
    pub(crate) fn add_tenant(&self, tenant: &str, owner: &str) {
        callsync(
            &self.dir("server"),
            &["--tenant", tenant, "add-tenant", "--owner", owner],
        )
        .ok();
    }

    /// The rep's desk and phone (`phone-rep`), logged in, and customer `cus-1`
    /// created and opened on the desk.
    pub(crate) fn rep_devices(&self) -> (PathBuf, PathBuf) {
        let desk = self.dir("rep-desk");
        let phone = self.dir("rep-phone");
        self.login(&desk, "desk", REP).ok();
        self.login_as(&phone, "phone", REP, Some("phone-rep")).ok();
        create_customer(&desk, "cus-1", "株式会社さくら物産").ok();
        (desk, phone)
    }
}

/// `desk create` of customer `id` named `company`, with the journeys' number.
pub(crate) fn create_customer(desk: &Path, id: &str, company: &str) -> Run {
    callsync(
        desk,
        &[
            "desk",
            "create",
            "--id",
            id,
            "--company",
            company,
            "--contact",
            "佐藤 健一",
            "--number",
            &format!("代表:{NUMBER}"),
        ],
    )
}

/// The `call` field of a request's JSON.
pub(crate) fn call_id(v: &Value) -> String {
    v["call"].as_str().expect("call id").to_owned()
}

/// Whether a call view has this flag.
pub(crate) fn has_flag(view: &Value, flag: &str) -> bool {
    view["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}
