//! What each command does: open the data directory, stamp events with this
//! device, user and clock, pass them through the core inside one store write, and
//! report the result.
//!
//! Owns: identity and clock for this process, id generation, the order of a write
//! (open calls → load → record → save → commit). Does not own: the rules (core),
//! persistence (store), or formatting (see `render`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use callsync_core::{
    ActorId, CallEvent, CallId, CallView, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventId,
    EventKind, NewCustomer, PhoneEntry, PhoneNumber, ResultCatalog, ResultOption, ResultTypeId,
    SavedResultFields, Stamp, TenantId, Timestamp, UserId,
};
use callsync_replica::SavedSession;
use callsync_store::{RuleSettings, Store};
use chrono::{NaiveDateTime, TimeZone};
use chrono_tz::Tz;

use crate::args::{Global, ResultArgs};

/// The file name of the database inside a data directory.
pub(crate) const DB_FILE: &str = "callsync.sqlite";

/// One process's view of who and when it is, over an open store.
pub(crate) struct App {
    pub(crate) store: Store,
    pub(crate) tenant: TenantId,
    pub(crate) user: UserId,
    pub(crate) desk: DeviceId,
    pub(crate) phone: DeviceId,
    server: DeviceId,
    pub(crate) tz: Tz,
    pub(crate) now: Timestamp,
    pub(crate) catalog: ResultCatalog,
    pub(crate) start_limit_ms: i64,
    actor: ActorId,
    /// The device's session, when this data directory has logged in to a server.
    pub(crate) session: Option<SavedSession>,
    /// Its device session: stamps on the server's clock and records through the
    /// same checks, outbox and unsent ledger as the running device.
    device: Option<callsync_replica::client::Session>,
    /// This machine's own clock (`now` is the server's, once a device has
    /// learnt its offset).
    device_now: Timestamp,
    /// The data directory.
    pub(crate) data: PathBuf,
}

/// The default data directory: `$XDG_DATA_HOME/callsync`, else `~/.local/share/callsync`.
pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("callsync");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/callsync"),
        None => PathBuf::from("callsync-data"),
    }
}

impl App {
    /// Opens (creating if needed) the data directory and this process's identity.
    pub(crate) fn open(global: &Global, data: &Path) -> anyhow::Result<Self> {
        // Every flag is checked before the disk is touched: a refused command
        // creates nothing, not even the data directory.
        let tenant = TenantId::new(&global.tenant)?;
        let user = UserId::new(&global.user)?;
        let desk = DeviceId::new(&global.desk)?;
        let phone = DeviceId::new(&global.phone)?;
        // Acting as the server (expire-due) in local mode.
        let server = DeviceId::new("server")?;
        let tz: Tz = global
            .tz
            .parse()
            .map_err(|_| InputError::UnknownTimeZone(global.tz.clone()))?;
        let now = match &global.now {
            Some(text) => parse_time(text, tz)?,
            None => callsync_replica::clock::now(),
        };
        callsync_store::create_private_dir(data)
            .with_context(|| format!("cannot create data directory {}", data.display()))?;
        let mut store = Store::open(&data.join(DB_FILE))
            .with_context(|| format!("cannot open the database in {}", data.display()))?;
        // One Automerge actor per data directory: writes are serialized by the
        // store's write lock, so sequence numbers never collide across processes.
        let actor = callsync_replica::session::device_actor(&mut store)?;
        // A logged-in device acts as its session says, whatever the flags say.
        let (mut tenant, mut user, mut desk, mut phone) = (tenant, user, desk, phone);
        let session = SavedSession::load(&store)?;
        if let Some(s) = &session {
            tenant = s.tenant.clone();
            user = s.user.clone();
            match s.kind {
                DeviceKind::Phone => phone = s.device.clone(),
                _ => desk = s.device.clone(),
            }
        }
        let device_now = now;
        let device = match &session {
            Some(_) => {
                let mut tx = store.write()?;
                let restored = callsync_session::device::DeviceSession::restore(
                    callsync_session::device::DeviceSettings {
                        start_limit_ms: i64::from(global.start_limit_secs) * 1000,
                        ..Default::default()
                    },
                    &mut tx,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                drop(tx);
                restored
            }
            None => None,
        };
        // Every rule that compares times compares the server's.
        let now = device.as_ref().map_or(now, |d| d.server_time(device_now));
        let mut app = Self {
            device,
            device_now,
            session,
            store,
            tenant,
            user,
            desk,
            phone,
            server,
            tz,
            now,
            catalog: ResultCatalog::standard(),
            start_limit_ms: i64::from(global.start_limit_secs) * 1000,
            actor,
            data: data.to_owned(),
        };
        app.catalog = crate::rules::catalog(&app);
        Ok(app)
    }

    fn stamp(&self, kind: DeviceKind) -> Stamp {
        if let Some(device) = &self.device
            && device.identity().kind == kind
        {
            return device.stamp(self.device_now);
        }
        let device = match kind {
            DeviceKind::Phone => self.phone.clone(),
            DeviceKind::Desk => self.desk.clone(),
            DeviceKind::Server => self.server.clone(),
        };
        Stamp {
            at: self.now,
            device,
            device_kind: kind,
            user: self.user.clone(),
            device_at: None,
        }
    }

    pub(crate) fn event(
        &self,
        call: &CallId,
        kind: DeviceKind,
        what: EventKind,
    ) -> anyhow::Result<CallEvent> {
        Ok(CallEvent {
            id: EventId::new(new_id("ev"))?,
            call: call.clone(),
            stamp: self.stamp(kind),
            kind: what,
        })
    }

    /// Records events on one customer's call in one write: the user's open calls
    /// elsewhere, the document, the rules, the save and the commit.
    pub(crate) fn act(
        &mut self,
        customer: &CustomerId,
        events: Vec<CallEvent>,
    ) -> anyhow::Result<CallView> {
        let own = |e: &CallEvent| {
            self.device
                .as_ref()
                .is_some_and(|d| d.identity().device == e.stamp.device)
        };
        if events.iter().all(own)
            && let Some(device) = self.device.as_mut()
        {
            let mut tx = self.store.write()?;
            let mut rng = callsync_replica::session::SystemEntropy;
            let view = device
                .record(self.device_now, &mut rng, &mut tx, customer, events)
                .map_err(action_error)?;
            tx.commit()?;
            return Ok(view);
        }
        let rules = RuleSettings {
            tenant: &self.tenant,
            catalog: &self.catalog,
            start_limit_ms: self.start_limit_ms,
        };
        Ok(self
            .store
            .record(&self.user, customer, self.actor.clone(), events, rules)?)
    }

    /// Records one event on an existing call, found through the call index.
    pub(crate) fn act_on_call(
        &mut self,
        call: &str,
        kind: DeviceKind,
        what: EventKind,
    ) -> anyhow::Result<CallView> {
        let call = CallId::new(call)?;
        let customer = self.store.customer_of_call(&self.tenant, &call)?;
        let event = self.event(&call, kind, what)?;
        self.act(&customer, vec![event])
    }

    /// Desk: asks `origin` to dial `number` of `customer`.
    pub(crate) fn request(
        &mut self,
        customer: &str,
        number: &str,
        origin: Option<&str>,
        recording: bool,
    ) -> anyhow::Result<CallView> {
        let customer = CustomerId::new(customer)?;
        let call = CallId::new(new_id("call"))?;
        let origin = match origin {
            Some(o) => DeviceId::new(o)?,
            None => self.phone.clone(),
        };
        let what = EventKind::Requested {
            destination: PhoneNumber::parse(number)?,
            origin,
            recording,
        };
        let event = self.event(&call, DeviceKind::Desk, what)?;
        self.act(&customer, vec![event])
    }

    /// The result form's fields as picked, with the type's default status (when
    /// no rule set is available to decide).
    pub(crate) fn result_fields(&self, args: &ResultArgs) -> anyhow::Result<SavedResultFields> {
        let result_type = ResultTypeId::new(&args.result_type)?;
        let option = match (&args.recall, &args.restrict_until) {
            (Some(at), _) => ResultOption::Recall {
                at: parse_time(at, self.tz)?,
            },
            (None, Some(until)) => ResultOption::Restriction {
                until: parse_time(until, self.tz)?,
            },
            (None, None) => ResultOption::None,
        };
        let customer_status = match &args.status {
            Some(s) => Some(callsync_core::CustomerStatus::new(s.trim())),
            None => self
                .catalog
                .get(&result_type)
                .and_then(|t| t.default_status.clone()),
        };
        Ok(SavedResultFields {
            result_type,
            option,
            customer_status,
            memo: args.memo.clone(),
            decision: None,
            kept_as_picked: None,
        })
    }

    /// Saves a result from the desk, decided by the tenant's rules.
    pub(crate) fn save_result(
        &mut self,
        call: &str,
        args: &ResultArgs,
    ) -> anyhow::Result<CallView> {
        let call_id = CallId::new(call)?;
        let fields = crate::rules::result_fields(self, &call_id, None, args)?;
        self.act_on_call(call, DeviceKind::Desk, EventKind::ResultSaved(fields))
    }

    /// Desk: logs a manual call and its result as one change.
    pub(crate) fn manual_call(
        &mut self,
        customer: &str,
        number: &str,
        args: &ResultArgs,
    ) -> anyhow::Result<CallView> {
        let customer = CustomerId::new(customer)?;
        let call = CallId::new(new_id("call"))?;
        let attempt = self
            .load(&customer)?
            .customer()?
            .calls
            .iter()
            .filter(|c| c.took_place())
            .count();
        let facts = callsync_core::plugin::CallFacts {
            ended_at: self.now,
            attempt: u32::try_from(attempt + 1).unwrap_or(u32::MAX),
        };
        let fields = crate::rules::result_fields(self, &call, Some(facts), args)?;
        let events = vec![
            self.event(
                &call,
                DeviceKind::Desk,
                EventKind::ManualCall {
                    number: PhoneNumber::parse(number)?,
                },
            )?,
            self.event(&call, DeviceKind::Desk, EventKind::ResultSaved(fields))?,
        ];
        self.act(&customer, events)
    }

    /// Server: records `expired` on every request past its limit. Returns them.
    pub(crate) fn expire_due(&mut self) -> anyhow::Result<Vec<CallView>> {
        let due: Vec<_> = self
            .store
            .calls(&self.tenant, None, None)?
            .into_iter()
            .filter(|c| {
                c.phase == callsync_core::Phase::AwaitingStart
                    && self.now >= c.requested_at.plus_millis(self.start_limit_ms)
            })
            .collect();
        let mut expired = Vec::new();
        for row in due {
            let event = self.event(&row.call, DeviceKind::Server, EventKind::Expired)?;
            // A request started or cancelled meanwhile is refused by the rules: skip
            // it. Anything else (the database, a damaged document) is an error.
            match self.act(&row.customer, vec![event]) {
                Ok(view) => expired.push(view),
                Err(e) if core_error(&e).is_some() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(expired)
    }

    /// Creates customers in one write: all or nothing.
    pub(crate) fn create_customers(&mut self, customers: &[NewCustomer]) -> anyhow::Result<()> {
        if self.session.is_some() {
            return Err(InputError::ServerOwnsCustomers.into());
        }
        let mut tx = self.store.write()?;
        for new in customers {
            let mut doc = CustomerDoc::create(new, self.now, self.actor.clone())?;
            tx.insert(&mut doc)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A new customer from command-line fields.
    pub(crate) fn new_customer(
        &self,
        id: &str,
        company: &str,
        contact: &str,
        owner: Option<&str>,
        phones: &[String],
    ) -> anyhow::Result<NewCustomer> {
        Ok(NewCustomer {
            tenant: self.tenant.clone(),
            id: CustomerId::new(id)?,
            company: company.to_owned(),
            contact: contact.to_owned(),
            owner: match owner {
                Some(o) => UserId::new(o)?,
                None => self.user.clone(),
            },
            phones: phones
                .iter()
                .map(|p| parse_phone_entry(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Loads a customer document for reading.
    pub(crate) fn load(&self, customer: &CustomerId) -> anyhow::Result<CustomerDoc> {
        Ok(self
            .store
            .load(&self.tenant, customer, self.actor.clone())?
            .doc)
    }

    /// Formats a time for people, in the tenant's zone.
    pub(crate) fn fmt_time(&self, t: Timestamp) -> String {
        match self.tz.timestamp_millis_opt(t.as_millis()).single() {
            Some(local) => local.format("%Y-%m-%d %H:%M:%S %Z").to_string(),
            None => t.to_string(),
        }
    }
}

/// A device session's refusal as the CLI reports errors (the core's refusals
/// keep their type, so their codes and Japanese text come through).
fn action_error(e: callsync_session::device::actions::ActionError) -> anyhow::Error {
    use callsync_session::device::actions::ActionError;
    match e {
        ActionError::Refused(core) => callsync_store::StoreError::Core(core).into(),
        ActionError::Storage(e) => callsync_replica::ClientError::Storage(e).into(),
        other => callsync_replica::ClientError::Refused(callsync_core::wire::ErrorBody {
            code: other.code().to_owned(),
            message: other.to_string(),
            message_ja: other.message_ja(),
        })
        .into(),
    }
}

/// The core's refusal behind an error, if the core refused.
pub(crate) fn core_error(e: &anyhow::Error) -> Option<&callsync_core::CoreError> {
    e.chain().find_map(
        |cause| match cause.downcast_ref::<callsync_store::StoreError>() {
            Some(callsync_store::StoreError::Core(core)) => Some(core),
            _ => cause.downcast_ref::<callsync_core::CoreError>(),
        },
    )
}

/// `LABEL:NUMBER` (or just `NUMBER`, labelled 代表).
pub(crate) fn parse_phone_entry(text: &str) -> Result<PhoneEntry, callsync_core::CoreError> {
    let (label, number) = match text.split_once(':') {
        Some((label, number)) => (label.trim(), number),
        None => ("代表", text),
    };
    Ok(PhoneEntry {
        label: label.to_owned(),
        number: PhoneNumber::parse(number)?,
    })
}

/// Parses RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` in the tenant's zone.
pub(crate) fn parse_time(text: &str, tz: Tz) -> anyhow::Result<Timestamp> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Timestamp::from_millis(t.timestamp_millis()));
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            let local =
                tz.from_local_datetime(&naive)
                    .earliest()
                    .ok_or_else(|| InputError::BadTime {
                        text: text.to_owned(),
                        tz: tz.to_string(),
                    })?;
            return Ok(Timestamp::from_millis(local.timestamp_millis()));
        }
    }
    Err(InputError::BadTime {
        text: text.to_owned(),
        tz: tz.to_string(),
    }
    .into())
}

/// Command-line input the core never sees.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputError {
    /// A time that cannot be read (or does not exist in the zone).
    #[error("cannot read the time {text:?}: use \"YYYY-MM-DD HH:MM\" ({tz}) or RFC 3339")]
    BadTime { text: String, tz: String },
    /// An unknown IANA time zone name.
    #[error("unknown time zone {0:?}")]
    UnknownTimeZone(String),
    /// A result for a call that never started.
    #[error("the call never took place, so it has no result to decide")]
    CallNeverTookPlace,
    /// A request with no --origin, and the user has no phone.
    #[error("you have no phone logged in yet: run `callsync phone login`")]
    NoPhone,
    /// A request with no --origin, and the user has several phones.
    #[error("you have several phones: pick one with --origin")]
    SeveralPhones,
    /// Customers of a synced device are created on the server.
    #[error(
        "this data directory syncs with a server: create customers with `callsync desk create`"
    )]
    ServerOwnsCustomers,
}

/// A fresh id: prefix and 64 random bits in hex.
fn new_id(prefix: &str) -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut id = String::with_capacity(prefix.len() + 17);
    id.push_str(prefix);
    id.push('-');
    for b in &bytes[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}
