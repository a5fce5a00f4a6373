//! The kept derivation told exactly which entries a sync added
//! (`CustomerDoc::learn_new_entries`, as the server's admission does) reads the
//! same as a fresh derivation, and refuses to learn when it does not know the
//! document's state before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callsync_core::{
    ActorId, CallEvent, CallId, CustomerDoc, CustomerId, DeviceId, DeviceKind, EventId, EventKind,
    NewCustomer, PhoneEntry, PhoneNumber, ResultCatalog, RuleContext, Stamp, TenantId, Timestamp,
    UserId,
};

const T0: i64 = 1_795_482_000_000;

fn created() -> CustomerDoc {
    let new = NewCustomer {
        tenant: TenantId::new("tenant-a").unwrap(),
        id: CustomerId::new("cus-0001").unwrap(),
        company: "株式会社さくら物産".into(),
        contact: "佐藤 健一".into(),
        owner: UserId::new("rep@a.example").unwrap(),
        phones: vec![PhoneEntry {
            label: "代表".into(),
            number: PhoneNumber::parse("03-1234-5678").unwrap(),
        }],
    };
    CustomerDoc::create(
        &new,
        Timestamp::from_millis(T0),
        ActorId::from(b"server".as_slice()),
    )
    .unwrap()
}

fn event(id: &str, call: &str, at: i64, device: &str, kind: EventKind) -> CallEvent {
    CallEvent {
        id: EventId::new(id).unwrap(),
        call: CallId::new(call).unwrap(),
        stamp: Stamp {
            at: Timestamp::from_millis(T0 + at),
            device: DeviceId::new(device).unwrap(),
            device_kind: if device.starts_with("phone") {
                DeviceKind::Phone
            } else {
                DeviceKind::Desk
            },
            user: UserId::new("rep@a.example").unwrap(),
            device_at: None,
        },
        kind,
    }
}

fn request() -> EventKind {
    EventKind::Requested {
        destination: PhoneNumber::parse("03-1234-5678").unwrap(),
        origin: DeviceId::new("phone-1").unwrap(),
        recording: false,
    }
}

/// The server's copy, read once (so its derivation is kept), and a device's
/// copy that records `events` after it.
fn server_and_device(
    events: Vec<CallEvent>,
) -> (
    CustomerDoc,
    Vec<automerge::Change>,
    Vec<automerge::ChangeHash>,
) {
    let catalog = ResultCatalog::standard();
    let ctx = RuleContext::new(&catalog);
    let mut server = created();
    server
        .record(event("rq-0", "call-0", 0, "desk-1", request()), &ctx)
        .unwrap();
    let mut device =
        CustomerDoc::load(&server.save(), ActorId::from(b"desk-1".as_slice())).unwrap();
    let before = server.heads();
    assert!(server.customer().is_ok());
    for e in events {
        device.record(e, &ctx).unwrap();
    }
    let changes: Vec<automerge::Change> = device
        .automerge_mut()
        .get_changes(&before)
        .into_iter()
        .collect();
    (server, changes, before)
}

#[test]
fn entries_learnt_after_a_sync_read_as_a_fresh_derivation() {
    let new = vec![
        event("cx-0", "call-0", 1_000, "desk-1", EventKind::Cancelled),
        event("rq-1", "call-1", 200_000, "desk-1", request()),
    ];
    let (mut server, changes, before) = server_and_device(new.clone());
    server.automerge_mut().apply_changes(changes).unwrap();
    let learnt = server.learn_new_entries(
        &before,
        new.iter()
            .map(|e| (format!("{}/{}", e.call, e.id), Some(e.clone()))),
    );
    assert!(learnt, "the kept state matched the heads before");
    let fresh = CustomerDoc::load(&server.save(), ActorId::from(b"reader".as_slice())).unwrap();
    assert_eq!(server.customer().unwrap(), fresh.customer().unwrap());
    assert_eq!(server.events(), fresh.events());
}

#[test]
fn nothing_is_learnt_from_other_heads_and_the_next_read_scans() {
    let new = vec![event(
        "cx-0",
        "call-0",
        1_000,
        "desk-1",
        EventKind::Cancelled,
    )];
    let (mut server, changes, _before) = server_and_device(new.clone());
    server.automerge_mut().apply_changes(changes).unwrap();
    // Heads the kept state never matched: refused, and reads still answer right.
    let wrong = server.heads();
    assert!(!server.learn_new_entries(&wrong, Vec::new()));
    let fresh = CustomerDoc::load(&server.save(), ActorId::from(b"reader".as_slice())).unwrap();
    assert_eq!(server.customer().unwrap(), fresh.customer().unwrap());
}
