//! A fleet of phones for the bench programs that run a real server against a
//! separate load-generator process (`fanout`, `storm`).
//!
//! Owns: the fleet's names (phones, reps, session tokens), enrolling it straight
//! into the server's database (logging a thousand phones in through Argon2 is not
//! what those benches measure), requested calls for its phones, and the server's
//! runtime. Does not own: what the phones do (each bench's load generator).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callsync_core::{
    ActorId, CallEvent, CallId, CustomerDoc, DeviceId, DeviceKind, EventId, EventKind, PhoneNumber,
    ResultCatalog, Role, RuleContext, Stamp, TenantId, UserId,
};
use callsync_server::{DB_FILE, Server, ServerConfig, init_owner};
use callsync_store::{MemberRecord, NewSession, Store};

use crate::now;

/// The number every bench customer has and every requested call dials.
pub const NUMBER: &str = "03-1234-5678";

/// A tenant of `n` phones, one rep each (presence goes to a member's other
/// devices, so a thousand phones of one member would be a thousand-squared
/// presence storm no tenant has).
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// The tenant's name, also the domain of its members' emails.
    pub name: &'static str,
}

impl Fleet {
    /// The tenant.
    pub fn tenant(&self) -> TenantId {
        TenantId::new(self.name).unwrap()
    }

    /// The tenant's owner.
    pub fn owner(&self) -> UserId {
        UserId::new(format!("owner@{}.example", self.name)).unwrap()
    }

    /// Phone `i`.
    pub fn phone(&self, i: usize) -> DeviceId {
        DeviceId::new(format!("phone-{i:04}")).unwrap()
    }

    /// Phone `i`'s Automerge actor, as its session binds it.
    pub fn actor(&self, i: usize) -> ActorId {
        ActorId::from(self.phone(i).as_str().as_bytes())
    }

    /// Phone `i`'s rep.
    pub fn rep(&self, i: usize) -> UserId {
        UserId::new(format!("rep{i:04}@{}.example", self.name)).unwrap()
    }

    /// Phone `i`'s session token.
    pub fn token(&self, i: usize) -> String {
        format!("token-{i:04}-{}", self.name)
    }

    /// A server data directory at `dir` with the tenant, its owner, and `n` reps
    /// each holding a phone session valid for a day. Returns the open store.
    pub fn enrol(&self, dir: &std::path::Path, n: usize) -> Store {
        init_owner(dir, self.name, self.owner().as_str(), "bench password").unwrap();
        let mut store = Store::open(&dir.join(DB_FILE)).unwrap();
        let owner: MemberRecord = store.member(&self.owner()).unwrap().unwrap();
        for i in 0..n {
            let device = self.phone(i);
            let rep = MemberRecord {
                email: self.rep(i),
                role: Role::User,
                ..owner.clone()
            };
            store.add_member(&rep, now()).unwrap();
            store
                .open_session(
                    &rep,
                    &NewSession {
                        device: &device,
                        kind: DeviceKind::Phone,
                        actor: &self.actor(i).to_hex_string(),
                        token_hash: &callsync_server::accounts::token_hash(&self.token(i)),
                        expires_at: now().plus_millis(86_400_000),
                    },
                    now(),
                )
                .unwrap();
        }
        store
    }

    /// Records on `doc` a call `call` the desk asked phone `i` to dial, as
    /// `requester`.
    pub fn request(
        &self,
        doc: &mut CustomerDoc,
        event: &str,
        call: CallId,
        i: usize,
        requester: UserId,
    ) {
        let catalog = ResultCatalog::standard();
        let event = CallEvent {
            id: EventId::new(event).unwrap(),
            call,
            stamp: Stamp {
                at: now(),
                device: DeviceId::new("desk-setup").unwrap(),
                device_kind: DeviceKind::Desk,
                user: requester,
                device_at: None,
            },
            kind: EventKind::Requested {
                destination: PhoneNumber::parse(NUMBER).unwrap(),
                origin: self.phone(i),
                recording: false,
            },
        };
        let ctx = RuleContext {
            catalog: &catalog,
            start_limit_ms: 0,
            other_open_calls: &[],
        };
        doc.record(event, &ctx).unwrap();
    }
}

/// Starts `config`'s server on a runtime of its own (two workers, threads named
/// `srv-rt`, so a bench can tell its CPU from the hubs').
pub fn start_server(config: ServerConfig) -> (tokio::runtime::Runtime, Server) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("srv-rt")
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(Server::start(config)).unwrap();
    (runtime, server)
}
