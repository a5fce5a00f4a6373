//! The command line: every subcommand, flag and default, as clap parses it.
//!
//! Owns: argument names, help texts and defaults. Does not own: what a command
//! does (see `app`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// callsync: customers and calls, a server, and the phone and desk that sync with it.
#[derive(Debug, Parser)]
#[command(name = "callsync", version, about)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags given before the subcommand. `--data`, `--json`, `--tz`, `--now` and
/// `--timeout-secs` apply everywhere (and may also follow the subcommand); the
/// identity and start-limit flags only to the local mode, `serve` and
/// `add-tenant`, so they are top-level only and the `desk`, `phone` and `admin`
/// commands, whose session says who they are, do not list them.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The data directory (created on first use).
    #[arg(long, global = true, env = "CALLSYNC_DATA")]
    pub(crate) data: Option<PathBuf>,
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// The tenant (company) to act in: local mode, `serve --init-owner`,
    /// `add-tenant`.
    #[arg(long, env = "CALLSYNC_TENANT", default_value = "default")]
    pub(crate) tenant: String,
    /// The signed-in user (local mode).
    #[arg(
        long,
        env = "CALLSYNC_USER",
        default_value = "rep1@sakura-sales.example"
    )]
    pub(crate) user: String,
    /// This desk's (browser's) device id, for desk actions (local mode).
    #[arg(long, env = "CALLSYNC_DESK", default_value = "desk-1")]
    pub(crate) desk: String,
    /// The phone's device id, for phone actions and as the default origin (local
    /// mode).
    #[arg(long, env = "CALLSYNC_PHONE", default_value = "phone-1")]
    pub(crate) phone: String,
    /// Time zone for showing and reading times.
    #[arg(long, global = true, env = "CALLSYNC_TZ", default_value = "Asia/Tokyo")]
    pub(crate) tz: String,
    /// Act as if it were this time (RFC 3339 or "YYYY-MM-DD HH:MM" local), instead of
    /// the system clock. For scripted runs and tests.
    #[arg(long, global = true, env = "CALLSYNC_NOW")]
    pub(crate) now: Option<String>,
    /// Run as if this machine's clock were this many seconds off (negative:
    /// behind), to try what a device with a wrong clock does. Devices stamp on
    /// the server's clock, learnt at every join, so this changes only the raw
    /// times kept beside the stamps.
    #[arg(
        long,
        global = true,
        env = "CALLSYNC_CLOCK_SKEW_SECS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub(crate) clock_skew_secs: i64,
    /// How long a phone has to press Start call, in seconds (local mode, the
    /// phone's offline checks, `serve`).
    #[arg(long, env = "CALLSYNC_START_LIMIT_SECS", default_value_t = 60)]
    pub(crate) start_limit_secs: u32,
    /// How long a desk, phone or admin command waits for the server before giving
    /// up.
    #[arg(
        long,
        global = true,
        env = "CALLSYNC_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub(crate) timeout_secs: u32,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create, list, show and import customers.
    #[command(subcommand)]
    Customer(CustomerCommand),
    /// Request, start, cancel and end calls; save results.
    #[command(subcommand)]
    Call(CallCommand),
    /// The call history, newest first.
    Calls {
        /// Only this customer's calls.
        #[arg(long)]
        customer: Option<String>,
        /// Only calls of this user.
        #[arg(long = "of")]
        of_user: Option<String>,
        /// Only calls whose (mandatory) result is still due.
        #[arg(long)]
        pending: bool,
    },
    /// A customer's timeline: every event, in time order.
    Timeline {
        /// The customer.
        customer: String,
    },
    /// Build a data directory from the fixtures and walk one call end to end.
    Demo,
    /// Run the server (QUIC) on this data directory.
    Serve(ServeArgs),
    /// The phone: log in, stay in sync, and act on the local replica (offline too).
    #[command(subcommand)]
    Phone(PhoneCommand),
    /// The desk (the browser's actions from the command line), against the server.
    #[command(subcommand)]
    Desk(DeskCommand),
    /// Admin or above: members, the calling contract, passwords, visibility.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Operator: add a tenant (--tenant) and its owner to the server's data
    /// directory. The password comes from CALLSYNC_PASSWORD or stdin.
    AddTenant {
        /// The owner's email.
        #[arg(long)]
        owner: String,
    },
}

/// `callsync serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The UDP address to listen on.
    #[arg(long, env = "CALLSYNC_LISTEN", default_value = "127.0.0.1:4433")]
    pub(crate) listen: std::net::SocketAddr,
    /// A PEM certificate chain to use instead of the generated self-signed one.
    #[arg(long, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// On an empty data directory, create the tenant (--tenant) and this owner
    /// first (ignored once the directory has a tenant). The password comes from
    /// CALLSYNC_PASSWORD or a line on stdin.
    #[arg(long, value_name = "EMAIL")]
    pub(crate) init_owner: Option<String>,
    /// How long session tokens last, in hours.
    #[arg(long, default_value_t = 24 * 30)]
    pub(crate) session_hours: u32,
    /// How long a new connection has to say who it is, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) handshake_timeout_ms: u64,
    /// Most customers one tenant may hold.
    #[arg(long, default_value_t = callsync_server::DEFAULT_MAX_CUSTOMERS_PER_TENANT)]
    pub(crate) max_customers_per_tenant: u64,
    /// The built browser page to serve (`clients/web/dist`, made by
    /// `bash clients/web/build.sh`).
    #[arg(long, env = "CALLSYNC_PAGE", value_name = "DIR")]
    pub(crate) page: Option<PathBuf>,
    /// The page's HTTP address (TCP); by default the --listen address, whose
    /// port number TCP and UDP can share.
    #[arg(long, env = "CALLSYNC_HTTP")]
    pub(crate) http: Option<std::net::SocketAddr>,
    /// A web origin, besides the page's own, whose pages may open WebTransport
    /// sessions (e.g. `https://crm.example.com`, where the page is served from
    /// elsewhere); repeatable.
    #[arg(long, value_name = "ORIGIN")]
    pub(crate) allow_origin: Vec<String>,
    /// Most bytes of recordings one tenant may store (50 GiB by default).
    #[arg(long, value_name = "BYTES")]
    pub(crate) recording_quota_bytes: Option<u64>,
    /// Most bytes one recording may have (128 MiB by default).
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_recording_bytes: Option<u64>,
}

/// How a device reaches and trusts the server.
#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The server's address (host:port).
    #[arg(long, env = "CALLSYNC_SERVER")]
    pub(crate) server: std::net::SocketAddr,
    /// The SHA-256 fingerprint `callsync serve` printed (pins its certificate).
    #[arg(long, env = "CALLSYNC_FINGERPRINT", required_unless_present = "ca")]
    pub(crate) fingerprint: Option<String>,
    /// Trust certificates from this CA (PEM) instead of a fingerprint.
    #[arg(long, conflicts_with = "fingerprint")]
    pub(crate) ca: Option<PathBuf>,
    /// The name the server's certificate is issued for.
    #[arg(long, default_value = "localhost")]
    pub(crate) server_name: String,
    /// Your email. The password comes from CALLSYNC_PASSWORD or a line on stdin.
    #[arg(long)]
    pub(crate) email: String,
    /// This device's id, the first time (a random one otherwise).
    #[arg(long = "device-id")]
    pub(crate) device_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PhoneCommand {
    /// Log this phone in (once per data directory).
    Login(LoginArgs),
    /// Stay connected and in sync, record recorded calls and upload them on
    /// Wi-Fi; print one JSON line per event until Ctrl-C.
    Run(PhoneRunArgs),
    /// Set the network the phone is on (what Android's connectivity
    /// callbacks say); a running `phone run` follows at once.
    Network {
        /// wifi, cellular or offline.
        kind: NetworkArg,
    },
    /// Calls waiting for Start call on this phone (local, works offline).
    Requests,
    /// Press Start call (local, works offline).
    Start {
        /// The call.
        call: String,
    },
    /// Save the call's result on the phone (local, works offline).
    Result {
        /// The call.
        call: String,
        #[command(flatten)]
        result: ResultArgs,
    },
    /// End the call on the phone (local, works offline).
    End {
        /// The call.
        call: String,
        /// The call's length in seconds.
        #[arg(long, default_value_t = 0)]
        duration: u32,
    },
    /// Show one call as this phone knows it.
    Show {
        /// The call.
        call: String,
    },
    /// This phone's calls, newest first (local).
    Calls,
    /// The tenant's result types (local, works offline).
    Types,
}

/// The phone's network, as its connectivity callbacks say.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum NetworkArg {
    /// Wi-Fi: recordings upload.
    Wifi,
    /// Mobile data: recordings wait.
    Cellular,
    /// No network.
    Offline,
}

/// `phone run`'s options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PhoneRunArgs {
    /// The network the phone is on at start (changed later with `phone network`).
    #[arg(long)]
    pub(crate) network: Option<NetworkArg>,
    /// Audio for recorded calls: a mono 16-bit WAV file (looped), standing in
    /// for the microphone; a 440 Hz tone when not given.
    #[arg(long)]
    pub(crate) audio: Option<std::path::PathBuf>,
    /// Samples per second of recordings: 8000 or 16000.
    #[arg(long, default_value_t = 16_000)]
    pub(crate) sample_rate: u32,
}

/// What the desk does with a call's recording.
#[derive(Debug, Subcommand)]
pub(crate) enum RecordingCommand {
    /// Download the recording to a file (a cut download resumes).
    Get {
        /// The call.
        call: String,
        /// The file to write.
        #[arg(short = 'o', long = "output")]
        output: std::path::PathBuf,
    },
    /// A short-lived link that plays the recording over HTTP (range requests,
    /// as the page's player uses): a path on the server's page origin.
    Link {
        /// The call.
        call: String,
    },
    /// Delete the recording (manager or above): its bytes leave the server,
    /// and the call keeps a tombstone of who deleted it and when.
    Delete {
        /// The call.
        call: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeskCommand {
    /// Log this desk in (once per data directory).
    Login(LoginArgs),
    /// The customers you may see (asks the server).
    Customers,
    /// Create a customer on the server.
    Create {
        /// Customer id (e.g. cus-0100).
        #[arg(long)]
        id: String,
        /// Company name.
        #[arg(long)]
        company: String,
        /// Contact person.
        #[arg(long)]
        contact: String,
        /// Assigned rep (defaults to you).
        #[arg(long)]
        owner: Option<String>,
        /// A phone number as LABEL:NUMBER (repeatable).
        #[arg(long = "number", required = true)]
        phones: Vec<String>,
    },
    /// Open customers: replicate them to this desk and show them.
    Open {
        /// The customers.
        #[arg(required = true)]
        customers: Vec<String>,
    },
    /// Your devices, and whether each is connected now.
    Phones,
    /// Click Call customer: ask your phone to dial.
    Request {
        /// The customer.
        customer: String,
        /// The number to dial.
        #[arg(long)]
        number: String,
        /// The phone to dial from (defaults to your only phone).
        #[arg(long)]
        origin: Option<String>,
        /// Do not record the call.
        #[arg(long)]
        no_recording: bool,
    },
    /// Click Cancel call.
    Cancel {
        /// The call.
        call: String,
    },
    /// Click the red end button.
    End {
        /// The call.
        call: String,
    },
    /// Save the call's result.
    Result {
        /// The call.
        call: String,
        #[command(flatten)]
        result: ResultArgs,
    },
    /// Sync, then show one call.
    Show {
        /// The call.
        call: String,
    },
    /// Sync, then list the calls this desk holds.
    Calls {
        /// Only calls whose result is still due.
        #[arg(long)]
        pending: bool,
    },
    /// Who to call again, and when (asks the server), soonest first.
    Recalls,
    /// The tenant's result types, as the result form offers them.
    Types,
    /// A call's recording: download or delete it.
    #[command(subcommand)]
    Recording(RecordingCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Add a member. Their password comes from CALLSYNC_NEW_PASSWORD or stdin.
    AddUser {
        /// Their email.
        email: String,
        /// Their role.
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
        /// Grant the calling contract now.
        #[arg(long)]
        contract: bool,
    },
    /// Grant the calling contract.
    Grant {
        /// The member.
        email: String,
    },
    /// Revoke the calling contract (their devices are signed out).
    Revoke {
        /// The member.
        email: String,
    },
    /// Give a member another role (their devices reconnect with it).
    Role {
        /// The member.
        email: String,
        /// The new role.
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Set a new password (from CALLSYNC_NEW_PASSWORD or stdin); signs them out.
    ResetPassword {
        /// The member.
        email: String,
    },
    /// List members.
    Users,
    /// Turn the assignee visibility restriction (担当者閲覧制限) on or off.
    Visibility {
        /// on or off.
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Result-rule plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Install a plugin and make it the tenant's rules (an upgrade or a rollback
    /// is the same command with another file). Checked before anything changes.
    Install {
        /// The plugin: a WebAssembly component, or a module built with the SDK
        /// (`cargo build --target wasm32-unknown-unknown`).
        file: PathBuf,
        /// A plugin setting as KEY=VALUE (repeatable).
        #[arg(long = "setting")]
        settings: Vec<String>,
        /// Days off as a `date,name` table (default: Japanese public holidays).
        #[arg(long)]
        holidays: Option<PathBuf>,
        /// The tenant's time zone.
        #[arg(long, default_value = "Asia/Tokyo")]
        time_zone: String,
    },
    /// The installed rule sets, the active one first, and the install history.
    List,
    /// Make an installed rule set active again (its plugin, settings, holidays
    /// and zone as installed), checked again like any install.
    Rollback {
        /// The rule set's id, or a prefix of it (as `plugin list` shows it).
        ruleset: String,
    },
}

/// A role on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RoleArg {
    /// ユーザー
    User,
    /// マネージャー
    Manager,
    /// アドミン
    Admin,
    /// オーナー
    Owner,
}

impl From<RoleArg> for callsync_core::Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::User => Self::User,
            RoleArg::Manager => Self::Manager,
            RoleArg::Admin => Self::Admin,
            RoleArg::Owner => Self::Owner,
        }
    }
}

/// on / off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CustomerCommand {
    /// Create a customer.
    Create {
        /// Customer id (e.g. cus-0100).
        #[arg(long)]
        id: String,
        /// Company name.
        #[arg(long)]
        company: String,
        /// Contact person.
        #[arg(long)]
        contact: String,
        /// Assigned rep (defaults to the signed-in user).
        #[arg(long)]
        owner: Option<String>,
        /// A phone number as LABEL:NUMBER (repeatable), e.g. 代表:03-1234-5678.
        #[arg(long = "number", required = true)]
        phones: Vec<String>,
    },
    /// List customers.
    List,
    /// Show a customer: profile, status, follow-up, calls.
    Show {
        /// The customer.
        id: String,
    },
    /// Import customers from a CSV file (id,company,contact,owner,phones). All rows
    /// are checked first; one bad row imports nothing.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CallCommand {
    /// Desk: ask the phone to dial one of the customer's numbers.
    Request {
        /// The customer.
        customer: String,
        /// The number to dial (one of the customer's).
        #[arg(long)]
        number: String,
        /// The phone to dial from (defaults to --phone).
        #[arg(long)]
        origin: Option<String>,
        /// Do not record the call (recording is on by default).
        #[arg(long)]
        no_recording: bool,
    },
    /// Phone: press Start call.
    Start {
        /// The call.
        call: String,
    },
    /// Desk: press Cancel call.
    Cancel {
        /// The call.
        call: String,
    },
    /// End the call on one side.
    End {
        /// The call.
        call: String,
        /// Which side ends it.
        #[arg(long, value_enum)]
        side: Side,
        /// The call's length in seconds, as the phone measured it (phone side).
        #[arg(long, default_value_t = 0)]
        duration: u32,
    },
    /// Save the call's result (mandatory after every call that took place).
    Result {
        /// The call.
        call: String,
        #[command(flatten)]
        result: ResultArgs,
    },
    /// Desk: log a call made outside the system, with its result.
    Manual {
        /// The customer.
        customer: String,
        /// The number the call was with.
        #[arg(long)]
        number: String,
        #[command(flatten)]
        result: ResultArgs,
    },
    /// Show one call: phase, flags, results.
    Show {
        /// The call.
        call: String,
    },
    /// Server: record `expired` on every request past its start limit.
    ExpireDue,
    /// List the tenant's result types.
    Types,
}

/// The fields of the result form.
#[derive(Debug, Args)]
pub(crate) struct ResultArgs {
    /// The result type id (see `callsync call types`).
    #[arg(long = "type")]
    pub(crate) result_type: String,
    /// Recall at this time (5-minute step, in the future), or `auto` for the time
    /// the tenant's rules pick.
    #[arg(long, conflicts_with = "restrict_until")]
    pub(crate) recall: Option<String>,
    /// Call restriction until this time (5-minute step, in the future).
    #[arg(long)]
    pub(crate) restrict_until: Option<String>,
    /// The customer status (defaults to the result type's).
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// Free memo.
    #[arg(long, default_value = "")]
    pub(crate) memo: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Side {
    /// The phone ends the call.
    Phone,
    /// The browser (desk) ends the call.
    Browser,
}
