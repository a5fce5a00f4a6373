//! A real server and real device replicas over QUIC on loopback, in one process:
//! the sync protocol end to end (the CLI journeys run the same across processes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use callsync_core::wire::{RpcCall, RpcResult};
use callsync_core::{
    CallEvent, CallId, CustomerId, DeviceKind, EventId, EventKind, NewCustomer, PhoneNumber,
    ResultCatalog, Stamp, TenantId, Timestamp, UserId,
};
use callsync_replica::session::{LoginRequest, SavedTrust, device_actor};
use callsync_replica::{ClientEvent, SavedSession, SyncClient, login};
use callsync_server::{Server, ServerConfig, init_owner};
use callsync_store::{RuleSettings, Store};

const OWNER: &str = "owner@a.example";
const PASSWORD: &str = "correct horse battery";

struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    server: Server,
}

impl World {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        init_owner(&root.join("server"), "tenant-a", OWNER, PASSWORD).unwrap();
        let config = ServerConfig::new(root.join("server"), "127.0.0.1:0".parse().unwrap());
        let server = Server::start(config).await.unwrap();
        Self {
            _dir: dir,
            root,
            server,
        }
    }

    fn request(&self, kind: DeviceKind, email: &str, password: &str) -> LoginRequest {
        LoginRequest {
            server: self.server.local_addr(),
            server_name: "localhost".to_owned(),
            trust: SavedTrust::Fingerprint(self.server.fingerprint().to_owned()),
            email: email.to_owned(),
            password: password.to_owned(),
            kind,
            device: None,
        }
    }

    async fn device(&self, name: &str, kind: DeviceKind) -> (PathBuf, SavedSession) {
        let dir = self.root.join(name);
        let session = login(&dir, &self.request(kind, OWNER, PASSWORD))
            .await
            .unwrap();
        (dir, session)
    }
}

fn customer(id: &str) -> NewCustomer {
    let mut c = callsync_testkit::sample_customer();
    c.tenant = TenantId::new("tenant-a").unwrap();
    c.id = CustomerId::new(id).unwrap();
    c.owner = UserId::new(OWNER).unwrap();
    c
}

fn now() -> Timestamp {
    Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

/// Records one event locally, as the CLI's commands do.
fn record(dir: &Path, session: &SavedSession, customer: &str, call: &str, kind: EventKind) {
    let mut store = Store::open(&dir.join(callsync_replica::DB_FILE)).unwrap();
    let actor = device_actor(&mut store).unwrap();
    let event = CallEvent {
        id: EventId::new(format!("ev-{}", now().as_millis())).unwrap(),
        call: CallId::new(call).unwrap(),
        stamp: Stamp {
            at: now(),
            device: session.device.clone(),
            device_kind: session.kind,
            user: session.user.clone(),
            device_at: None,
        },
        kind,
    };
    let catalog = ResultCatalog::standard();
    let rules = RuleSettings {
        tenant: &session.tenant,
        catalog: &catalog,
        start_limit_ms: 60_000,
    };
    store
        .record(
            &session.user,
            &CustomerId::new(customer).unwrap(),
            actor,
            vec![event],
            rules,
        )
        .unwrap();
}

/// Handles `client`'s messages until one gives an event matching `what`,
/// answering `other`'s messages meanwhile (the server may ask the sender for a
/// change it announced: an Automerge bloom filter gives false positives).
async fn wait_for(
    client: &mut SyncClient,
    other: &mut SyncClient,
    what: impl Fn(&ClientEvent) -> bool,
) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::select! {
                message = client.recv() => {
                    let events = client.handle(message.unwrap()).await.unwrap();
                    let hit = events.iter().any(&what);
                    seen.extend(events);
                    if hit {
                        return;
                    }
                }
                message = other.recv() => {
                    other.handle(message.unwrap()).await.unwrap();
                }
            }
        }
    })
    .await;
    assert!(found.is_ok(), "timed out; saw {seen:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_request_from_the_desk_is_pushed_to_the_phone() {
    let world = World::start().await;
    let (desk_dir, desk) = world.device("desk", DeviceKind::Desk).await;
    let (phone_dir, phone) = world.device("phone", DeviceKind::Phone).await;

    let (mut d, _) = SyncClient::connect(&desk_dir).await.unwrap();
    let (result, _) = d
        .rpc(RpcCall::CustomerCreate {
            customer: customer("cus-1"),
        })
        .await
        .unwrap();
    assert!(matches!(result, RpcResult::Subscribed(_)), "{result:?}");
    d.settle(Duration::from_secs(10)).await.unwrap();

    let (mut p, _) = SyncClient::connect(&phone_dir).await.unwrap();
    p.settle(Duration::from_secs(10)).await.unwrap();

    record(
        &desk_dir,
        &desk,
        "cus-1",
        "call-1",
        EventKind::Requested {
            destination: PhoneNumber::parse(callsync_testkit::NUMBER).unwrap(),
            origin: phone.device.clone(),
            recording: true,
        },
    );
    assert!(d.local_changes().unwrap());
    d.push_local().await.unwrap();
    let seen = wait_for(&mut p, &mut d, |e| {
        matches!(e, ClientEvent::CallRequested { .. })
    })
    .await;
    assert!(seen.iter().any(
        |e| matches!(e, ClientEvent::CallRequested { call, .. } if call.as_str() == "call-1")
    ));
    d.settle(Duration::from_secs(10)).await.unwrap();

    // The phone starts; the desk sees it.
    record(&phone_dir, &phone, "cus-1", "call-1", EventKind::Started);
    p.push_local().await.unwrap();
    wait_for(
        &mut d,
        &mut p,
        |e| matches!(e, ClientEvent::CallUpdated { phase, .. } if phase == "in-call"),
    )
    .await;
    p.settle(Duration::from_secs(10)).await.unwrap();
    d.leave().await;
    p.leave().await;
    world.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_with_devices_connected_lets_go_of_its_address_at_once() {
    let world = World::start().await;
    let (desk_dir, _desk) = world.device("desk", DeviceKind::Desk).await;
    let (phone_dir, _phone) = world.device("phone", DeviceKind::Phone).await;
    let addr = world.server.local_addr();
    let mut server = world.server;
    for round in 0..3 {
        // Two devices joined and synced, still connected when the server stops.
        let (mut d, _) = SyncClient::connect(&desk_dir).await.unwrap();
        d.settle(Duration::from_secs(10)).await.unwrap();
        let (mut p, _) = SyncClient::connect(&phone_dir).await.unwrap();
        p.settle(Duration::from_secs(10)).await.unwrap();
        server.shutdown().await;
        // A server started right after, in the same process, on the same address
        // (a restart, or the next scenario of a bench).
        let config = ServerConfig::new(world.root.join("server"), addr);
        server = match Server::start(config).await {
            Ok(server) => server,
            Err(e) => panic!("round {round}: the address is still held: {e}"),
        };
        drop((d, p));
    }
    server.shutdown().await;
}
