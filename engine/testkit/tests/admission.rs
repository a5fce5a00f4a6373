//! Server admission of device changes: actor binding, stamps, and who may act on
//! which call. Each refusal is typed, and an honest change passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};

use automerge::transaction::Transactable;
use callsync_core::admission::{AdmissionError, Directory, Sender, admit};
use callsync_core::document::call_bucket;
use callsync_core::{
    ActorId, CallEvent, CallId, CustomerDoc, DeviceId, DeviceKind, EventId, EventKind, PhoneNumber,
    ResultCatalog, Role, RuleContext, Stamp, TenantId, UserId,
};
use callsync_testkit::{NUMBER, START, sample_customer, schema_one_customer};

const REP: &str = "rep@a.example";
const OTHER: &str = "other@a.example";

struct Devices {
    actors: HashMap<ActorId, DeviceId>,
    phones: HashSet<(DeviceId, UserId)>,
}

impl Directory for Devices {
    fn actor_is_bound_to(&self, actor: &ActorId, device: &DeviceId) -> bool {
        self.actors.get(actor) == Some(device)
    }
    fn is_phone_of(&self, device: &DeviceId, user: &UserId) -> bool {
        self.phones.contains(&(device.clone(), user.clone()))
    }
}

struct World {
    server: CustomerDoc,
    devices: Devices,
    catalog: ResultCatalog,
    next: u64,
}

fn actor(device: &str) -> ActorId {
    ActorId::from(device.as_bytes())
}

fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn sender(device: &str, kind: DeviceKind, user: &str, role: Role) -> Sender {
    Sender {
        tenant: TenantId::new("tenant-a").unwrap(),
        user: UserId::new(user).unwrap(),
        role,
        device: dev(device),
        kind,
    }
}

fn desk() -> Sender {
    sender("desk-1", DeviceKind::Desk, REP, Role::User)
}

fn phone() -> Sender {
    sender("phone-1", DeviceKind::Phone, REP, Role::User)
}

impl World {
    fn new() -> Self {
        let server = CustomerDoc::create(&sample_customer(), START, actor("server")).unwrap();
        let mut actors = HashMap::new();
        for d in ["desk-1", "phone-1", "phone-2", "desk-2"] {
            actors.insert(actor(d), dev(d));
        }
        let mut phones = HashSet::new();
        phones.insert((dev("phone-1"), UserId::new(REP).unwrap()));
        phones.insert((dev("phone-2"), UserId::new(OTHER).unwrap()));
        Self {
            server,
            devices: Devices { actors, phones },
            catalog: ResultCatalog::standard(),
            next: 0,
        }
    }

    /// A replica of the server's document written under `device`'s actor.
    fn replica(&mut self, device: &str) -> CustomerDoc {
        let mut doc = self.server.clone();
        doc.automerge_mut().set_actor(actor(device));
        doc
    }

    fn event(&mut self, who: &Sender, call: &str, kind: EventKind) -> CallEvent {
        self.next += 1;
        CallEvent {
            id: EventId::new(format!("ev-{}", self.next)).unwrap(),
            call: CallId::new(call).unwrap(),
            stamp: Stamp {
                at: START.plus_millis(1_000 * self.next as i64),
                device: who.device.clone(),
                device_kind: who.kind,
                user: who.user.clone(),
                device_at: None,
            },
            kind,
        }
    }

    /// Merges `replica` into a copy of the server's document and admits it.
    fn offer(
        &mut self,
        replica: &mut CustomerDoc,
        from: &Sender,
    ) -> Result<Vec<CallEvent>, AdmissionError> {
        let mut copy = self.server.clone();
        let before = copy.heads();
        // As the hub takes a sync message: Automerge's own merge, whatever the
        // changes touch (admission is what refuses them).
        copy.automerge_mut().merge(replica.automerge_mut()).unwrap();
        let admitted = admit(&mut copy, &before, from, &self.devices, &self.catalog);
        if admitted.is_ok() {
            self.server = copy;
        }
        admitted
    }

    fn record(&mut self, replica: &mut CustomerDoc, event: CallEvent) {
        replica
            .record(event, &RuleContext::new(&self.catalog))
            .unwrap();
    }

    /// An admitted request by the rep's desk for phone-1.
    fn requested(&mut self, call: &str) {
        let mut d = self.replica("desk-1");
        let e = self.event(&desk(), call, request("phone-1"));
        self.record(&mut d, e);
        self.offer(&mut d, &desk()).unwrap();
    }
}

fn request(origin: &str) -> EventKind {
    EventKind::Requested {
        destination: PhoneNumber::parse(NUMBER).unwrap(),
        origin: dev(origin),
        recording: true,
    }
}

/// Writes an entry straight into the document, bypassing the rules, as a
/// modified client could: `key` is `<call>/<event>`, written into the call's map
/// if it has one (schema 2), else into the flat `events` map.
fn put_raw(doc: &mut CustomerDoc, key: &str, value: &str) {
    let am = doc.automerge_mut();
    let (call, event) = key.split_once('/').unwrap_or((key, ""));
    match call_map(am, call) {
        Some(map) => am.put(&map, event, value).unwrap(),
        None => am.put(flat_events(am), key, value).unwrap(),
    }
    am.commit();
}

/// Schema 1's flat `events` map.
fn flat_events(am: &automerge::AutoCommit) -> automerge::ObjId {
    match automerge::ReadDoc::get(am, automerge::ROOT, "events").unwrap() {
        Some((_, id)) => id,
        None => panic!("no events map"),
    }
}

/// The bucket map `call`'s map belongs in.
fn bucket(am: &automerge::AutoCommit, call: &str) -> automerge::ObjId {
    let (_, calls) = automerge::ReadDoc::get(am, automerge::ROOT, "calls")
        .unwrap()
        .unwrap();
    let key = call_bucket(&CallId::new(call).unwrap());
    automerge::ReadDoc::get(am, &calls, key).unwrap().unwrap().1
}

/// `call`'s own map, if it has one.
fn call_map(am: &automerge::AutoCommit, call: &str) -> Option<automerge::ObjId> {
    automerge::ReadDoc::get(am, bucket(am, call), call)
        .unwrap()
        .map(|(_, id)| id)
}

fn put_event(doc: &mut CustomerDoc, event: &CallEvent) {
    let key = format!("{}/{}", event.call, event.id);
    put_raw(doc, &key, &serde_json::to_string(event).unwrap());
}

#[test]
fn an_honest_request_start_and_end_are_admitted() {
    let mut w = World::new();
    w.requested("call-1");
    let mut p = w.replica("phone-1");
    let started = w.event(&phone(), "call-1", EventKind::Started);
    w.record(&mut p, started.clone());
    assert_eq!(w.offer(&mut p, &phone()).unwrap(), vec![started]);
    let again = w.offer(&mut p, &phone()).unwrap();
    assert!(again.is_empty(), "changes the server holds are not new");
}

#[test]
fn a_desk_forging_the_phones_start_is_refused() {
    let mut w = World::new();
    w.requested("call-1");
    let mut d = w.replica("desk-1");
    // Stamped as the phone, written from the desk's actor.
    let forged = w.event(&phone(), "call-1", EventKind::Started);
    put_event(&mut d, &forged);
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert!(
        matches!(
            err,
            AdmissionError::ForgedStamp {
                field: "device",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_desk_recording_a_start_under_its_own_name_is_refused() {
    let mut w = World::new();
    w.requested("call-1");
    let mut d = w.replica("desk-1");
    let start = w.event(&desk(), "call-1", EventKind::Started);
    put_event(&mut d, &start);
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert_eq!(err.code(), "wrong-device-kind");
}

#[test]
fn changes_under_another_devices_actor_are_refused() {
    let mut w = World::new();
    w.requested("call-1");
    // The desk writes under the phone's actor, stamping honestly as the phone.
    let mut d = w.replica("phone-1");
    let start = w.event(&phone(), "call-1", EventKind::Started);
    w.record(&mut d, start);
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert!(matches!(err, AdmissionError::ForeignActor { .. }), "{err}");
    assert!(!err.message_ja().is_empty());
}

#[test]
fn editing_the_profile_or_root_is_refused() {
    let mut w = World::new();
    let mut d = w.replica("desk-1");
    let am = d.automerge_mut();
    let profile = match automerge::ReadDoc::get(am, automerge::ROOT, "profile").unwrap() {
        Some((_, id)) => id,
        None => panic!("no profile"),
    };
    am.put(&profile, "company", "乗っ取り株式会社").unwrap();
    am.commit();
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert_eq!(err.code(), "forbidden-edit");

    let mut d = w.replica("desk-1");
    d.automerge_mut()
        .put(automerge::ROOT, "tenant", "tenant-b")
        .unwrap();
    d.automerge_mut().commit();
    assert_eq!(
        w.offer(&mut d, &desk()).unwrap_err().code(),
        "forbidden-edit"
    );
}

#[test]
fn overwriting_an_existing_event_is_refused() {
    let mut w = World::new();
    w.requested("call-1");
    let (events, _) = w.server.events();
    let mut original = events[0].clone();
    original.kind = request("phone-1");
    original.stamp.at = original.stamp.at.plus_millis(5);
    let mut d = w.replica("desk-1");
    put_event(&mut d, &original);
    assert_eq!(
        w.offer(&mut d, &desk()).unwrap_err().code(),
        "forbidden-edit"
    );
}

#[test]
fn a_request_for_someone_elses_phone_is_refused() {
    let mut w = World::new();
    let mut d = w.replica("desk-1");
    let e = w.event(&desk(), "call-1", request("phone-2"));
    w.record(&mut d, e);
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert!(matches!(err, AdmissionError::NotYourPhone { .. }), "{err}");
}

#[test]
fn a_phone_that_is_not_the_origin_cannot_start_the_call() {
    let mut w = World::new();
    w.requested("call-1");
    let other_phone = sender("phone-2", DeviceKind::Phone, OTHER, Role::User);
    let mut p = w.replica("phone-2");
    let start = w.event(&other_phone, "call-1", EventKind::Started);
    put_event(&mut p, &start);
    let err = w.offer(&mut p, &other_phone).unwrap_err();
    assert_eq!(err.code(), "not-origin-phone");
}

#[test]
fn another_users_desk_cannot_cancel_the_call() {
    let mut w = World::new();
    w.requested("call-1");
    let other_desk = sender("desk-2", DeviceKind::Desk, OTHER, Role::User);
    let mut d = w.replica("desk-2");
    let cancel = w.event(&other_desk, "call-1", EventKind::Cancelled);
    w.record(&mut d, cancel);
    let err = w.offer(&mut d, &other_desk).unwrap_err();
    assert!(matches!(err, AdmissionError::NotYourCall { .. }), "{err}");
}

#[test]
fn deleting_a_recording_needs_a_manager() {
    let mut w = World::new();
    w.requested("call-1");
    let mut p = w.replica("phone-1");
    let start = w.event(&phone(), "call-1", EventKind::Started);
    w.record(&mut p, start);
    w.offer(&mut p, &phone()).unwrap();
    let mut d = w.replica("desk-1");
    let delete = w.event(&desk(), "call-1", EventKind::RecordingDeleted);
    w.record(&mut d, delete);
    let mut as_manager = w.replica("desk-1");
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert!(matches!(err, AdmissionError::RoleRequired { .. }), "{err}");
    let manager = sender("desk-1", DeviceKind::Desk, REP, Role::Manager);
    assert_eq!(w.offer(&mut as_manager, &manager).unwrap().len(), 0);
    assert_eq!(w.offer(&mut d, &manager).unwrap().len(), 1);
}

#[test]
fn an_unreadable_entry_or_one_under_the_wrong_key_is_refused() {
    let mut w = World::new();
    let mut d = w.replica("desk-1");
    put_raw(&mut d, "call-1/ev-9", "{not json");
    assert_eq!(
        w.offer(&mut d, &desk()).unwrap_err().code(),
        "malformed-event"
    );

    let mut d = w.replica("desk-1");
    let e = w.event(&desk(), "call-1", request("phone-1"));
    put_raw(&mut d, "call-7/ev-1", &serde_json::to_string(&e).unwrap());
    assert_eq!(
        w.offer(&mut d, &desk()).unwrap_err().code(),
        "malformed-event"
    );
}

#[test]
fn a_desk_writing_another_users_name_on_its_event_is_refused() {
    let mut w = World::new();
    let mut d = w.replica("desk-1");
    let as_other = sender("desk-1", DeviceKind::Desk, OTHER, Role::User);
    let e = w.event(&as_other, "call-1", request("phone-2"));
    put_event(&mut d, &e);
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert!(
        matches!(err, AdmissionError::ForgedStamp { field: "user", .. }),
        "{err}"
    );
}

/// The server's copy after an admitted request, and its size.
fn saved_len(w: &mut World) -> usize {
    w.server.save().len()
}

#[test]
fn operations_that_cancel_out_are_refused_although_nothing_would_show() {
    let mut w = World::new();
    w.requested("call-1");
    let mut d = w.replica("desk-1");
    let am = d.automerge_mut();
    let events = match automerge::ReadDoc::get(am, automerge::ROOT, "events").unwrap() {
        Some((_, id)) => id,
        None => panic!("no events map"),
    };
    am.put(&events, "call-1/padding", "x".repeat(60_000))
        .unwrap();
    am.delete(&events, "call-1/padding").unwrap();
    am.commit();
    let before = saved_len(&mut w);
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert_eq!(err.code(), "forbidden-edit", "{err}");
    assert_eq!(saved_len(&mut w), before, "nothing kept");

    // The same across two changes: a put, then its deletion.
    let mut d = w.replica("desk-1");
    let am = d.automerge_mut();
    let events = flat_events(am);
    am.put(&events, "call-1/padding", "{}").unwrap();
    am.commit();
    am.delete(&events, "call-1/padding").unwrap();
    am.commit();
    assert_eq!(
        w.offer(&mut d, &desk()).unwrap_err().code(),
        "forbidden-edit"
    );
}

#[test]
fn an_empty_change_carrying_a_large_message_is_refused() {
    let mut w = World::new();
    w.requested("call-1");
    let mut d = w.replica("desk-1");
    d.automerge_mut().empty_change(
        automerge::transaction::CommitOptions::default().with_message("x".repeat(1 << 20)),
    );
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert_eq!(err.code(), "forbidden-edit", "{err}");
    assert!(err.to_string().contains("commit message"), "{err}");

    let mut d = w.replica("desk-1");
    d.automerge_mut()
        .empty_change(automerge::transaction::CommitOptions::default());
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert!(err.to_string().contains("empty change"), "{err}");

    // An honest event with a commit message is refused too.
    let mut d = w.replica("phone-1");
    let started = w.event(&phone(), "call-1", EventKind::Started);
    let key = format!("{}/{}", started.call, started.id);
    let am = d.automerge_mut();
    let (_, events) = automerge::ReadDoc::get(am, automerge::ROOT, "events")
        .unwrap()
        .unwrap();
    am.put(&events, key, serde_json::to_string(&started).unwrap())
        .unwrap();
    am.commit_with(automerge::transaction::CommitOptions::default().with_message("hello"));
    assert_eq!(
        w.offer(&mut d, &phone()).unwrap_err().code(),
        "forbidden-edit"
    );
}

#[test]
fn an_event_with_a_field_this_server_does_not_know_is_refused() {
    let mut w = World::new();
    w.requested("call-1");
    let started = w.event(&phone(), "call-1", EventKind::Started);
    let mut json = serde_json::to_value(&started).unwrap();
    json["stamp"]["padding"] = serde_json::Value::String("x".repeat(1_000));
    let mut p = w.replica("phone-1");
    put_raw(
        &mut p,
        &format!("{}/{}", started.call, started.id),
        &json.to_string(),
    );
    let err = w.offer(&mut p, &phone()).unwrap_err();
    assert_eq!(err.code(), "unknown-field", "{err}");
    assert!(err.to_string().contains("stamp.padding"), "{err}");

    // The same event without the extra field passes.
    let mut p = w.replica("phone-1");
    put_event(&mut p, &started);
    assert_eq!(w.offer(&mut p, &phone()).unwrap(), vec![started]);
}

#[test]
fn a_change_over_the_size_and_operation_limits_is_refused() {
    use callsync_core::admission::{MAX_CHANGE_BYTES, MAX_OPS_PER_CHANGE};
    let mut w = World::new();
    w.requested("call-1");
    // Too many operations in one change (each a well-formed new entry).
    let mut p = w.replica("phone-1");
    let am = p.automerge_mut();
    let (_, events) = automerge::ReadDoc::get(am, automerge::ROOT, "events")
        .unwrap()
        .unwrap();
    for i in 0..=MAX_OPS_PER_CHANGE {
        am.put(&events, format!("call-1/e{i}"), "{}").unwrap();
    }
    am.commit();
    let err = w.offer(&mut p, &phone()).unwrap_err();
    assert_eq!(err.code(), "too-large", "{err}");

    // One entry larger than a change may be.
    let mut p = w.replica("phone-1");
    put_raw(&mut p, "call-1/big", &"x".repeat(MAX_CHANGE_BYTES + 1));
    assert_eq!(w.offer(&mut p, &phone()).unwrap_err().code(), "too-large");
}

#[test]
fn an_event_written_other_than_this_build_writes_it_is_refused() {
    let mut w = World::new();
    w.requested("call-1");
    let started = w.event(&phone(), "call-1", EventKind::Started);
    let key = format!("{}/{}", started.call, started.id);
    // The same event, padded with whitespace (it would compress to nothing and be
    // stored and forwarded as is).
    let padded = format!(
        "{}{}",
        serde_json::to_string_pretty(&started).unwrap(),
        " ".repeat(20_000)
    );
    let mut p = w.replica("phone-1");
    put_raw(&mut p, &key, &padded);
    assert_eq!(
        w.offer(&mut p, &phone()).unwrap_err().code(),
        "malformed-event"
    );
}

#[test]
fn more_changes_in_one_message_than_the_cap_are_refused_before_any_is_read() {
    let cap = callsync_core::admission::MAX_NEW_CHANGES;
    let mut w = World::new();
    let mut d = w.replica("desk-1");
    // One tiny entry per change: the count is checked before any entry is read.
    for i in 0..=cap {
        put_raw(&mut d, &format!("c/{i}"), "x");
    }
    match w.offer(&mut d, &desk()) {
        Err(AdmissionError::TooLarge { what, limit }) => {
            assert_eq!((what, limit), ("changes in one message", cap));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_event_over_its_cap_is_refused_by_its_size_within_a_change_under_its_own() {
    let cap = callsync_core::admission::MAX_EVENT_BYTES;
    let mut w = World::new();
    let mut d = w.replica("desk-1");
    // One operation of a little over the event cap: the change (one op, well
    // under 64 KiB) passes its own caps, the event's size is what refuses it.
    put_raw(&mut d, "call-1/ev-1", &"x".repeat(cap + 1));
    match w.offer(&mut d, &desk()) {
        Err(AdmissionError::TooLarge { what, limit }) => {
            assert_eq!((what, limit), ("event bytes", cap));
        }
        other => panic!("{other:?}"),
    }
}

// Schema 2: a call's events live in a map of their own, created once, by the
// change that carries the call's origin.

/// A request recorded by the rules on the desk's replica, as an honest desk writes
/// it: a new map in the call's bucket holding the request event.
#[test]
fn an_honest_request_creates_its_calls_map_in_its_bucket() {
    let mut w = World::new();
    w.requested("call-1");
    let am = w.server.automerge();
    let map = call_map(am, "call-1").expect("the call has its own map");
    assert_eq!(automerge::ReadDoc::keys(am, &map).count(), 1);
    assert!(
        automerge::ReadDoc::map_range(am, flat_events(am), ..)
            .next()
            .is_none(),
        "nothing in the flat map"
    );
}

/// Creates `call`'s map in `bucket_key` from `doc`'s actor, holding `event`.
fn create_map_raw(doc: &mut CustomerDoc, bucket_key: &str, event: &CallEvent) {
    let am = doc.automerge_mut();
    let (_, calls) = automerge::ReadDoc::get(am, automerge::ROOT, "calls")
        .unwrap()
        .unwrap();
    let (_, bucket) = automerge::ReadDoc::get(am, &calls, bucket_key)
        .unwrap()
        .unwrap();
    let map = am
        .put_object(&bucket, event.call.as_str(), automerge::ObjType::Map)
        .unwrap();
    am.put(
        &map,
        event.id.as_str(),
        serde_json::to_string(event).unwrap(),
    )
    .unwrap();
    am.commit();
}

#[test]
fn a_calls_map_in_another_bucket_is_refused() {
    let mut w = World::new();
    let request = w.event(&desk(), "call-9", request("phone-1"));
    let right = call_bucket(&request.call);
    let wrong = if right == "0" { "1" } else { "0" };
    let mut d = w.replica("desk-1");
    create_map_raw(&mut d, wrong, &request);
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert_eq!(err.code(), "forbidden-edit", "{err}");
    assert!(err.to_string().contains("bucket"), "{err}");
    assert!(
        call_map(w.server.automerge(), "call-9").is_none(),
        "nothing kept"
    );
}

#[test]
fn a_second_map_for_a_call_that_has_one_is_refused() {
    let mut w = World::new();
    // The desk's replica has not seen the request's map: it creates a rival one,
    // which would hide the first (or be hidden) if it were admitted.
    let mut d = w.replica("desk-2");
    w.requested("call-1");
    let desk_2 = sender("desk-2", DeviceKind::Desk, REP, Role::User);
    let rival = w.event(&desk_2, "call-1", request("phone-1"));
    create_map_raw(&mut d, call_bucket(&rival.call), &rival);
    let err = w.offer(&mut d, &desk_2).unwrap_err();
    assert_eq!(err.code(), "forbidden-edit", "{err}");
    assert!(err.to_string().contains("second map"), "{err}");
    let am = w.server.automerge();
    let all = automerge::ReadDoc::get_all(am, bucket(am, "call-1"), "call-1").unwrap();
    assert_eq!(all.len(), 1, "one map, the first");
}

#[test]
fn an_empty_calls_map_is_refused() {
    let mut w = World::new();
    let mut d = w.replica("desk-1");
    let am = d.automerge_mut();
    let b = bucket(am, "call-5");
    am.put_object(&b, "call-5", automerge::ObjType::Map)
        .unwrap();
    am.commit();
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert_eq!(err.code(), "forbidden-edit", "{err}");
    assert!(err.to_string().contains("empty map"), "{err}");
}

#[test]
fn a_flat_entry_for_a_call_that_has_its_own_map_is_refused() {
    let mut w = World::new();
    w.requested("call-1");
    let mut p = w.replica("phone-1");
    let started = w.event(&phone(), "call-1", EventKind::Started);
    let am = p.automerge_mut();
    am.put(
        flat_events(am),
        format!("{}/{}", started.call, started.id),
        serde_json::to_string(&started).unwrap(),
    )
    .unwrap();
    am.commit();
    let err = w.offer(&mut p, &phone()).unwrap_err();
    assert_eq!(err.code(), "forbidden-edit", "{err}");
    assert!(err.to_string().contains("has its own map"), "{err}");
}

#[test]
fn an_event_put_in_another_calls_map_is_refused() {
    let mut w = World::new();
    w.requested("call-1");
    let mut p = w.replica("phone-1");
    // A start of call-2 (no such call), written into call-1's map.
    let started = w.event(&phone(), "call-2", EventKind::Started);
    let am = p.automerge_mut();
    let map = call_map(am, "call-1").unwrap();
    am.put(
        &map,
        started.id.as_str(),
        serde_json::to_string(&started).unwrap(),
    )
    .unwrap();
    am.commit();
    let err = w.offer(&mut p, &phone()).unwrap_err();
    assert_eq!(err.code(), "forbidden-edit", "{err}");
    assert!(err.to_string().contains("not call call-2's"), "{err}");
}

#[test]
fn a_device_may_not_create_or_replace_the_buckets() {
    let mut w = World::new();
    let mut d = w.replica("desk-1");
    let am = d.automerge_mut();
    am.put_object(automerge::ROOT, "calls", automerge::ObjType::Map)
        .unwrap();
    am.commit();
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert_eq!(err.code(), "forbidden-edit", "{err}");

    let mut d = w.replica("desk-1");
    let am = d.automerge_mut();
    let (_, calls) = automerge::ReadDoc::get(am, automerge::ROOT, "calls")
        .unwrap()
        .unwrap();
    am.put_object(&calls, "g", automerge::ObjType::Map).unwrap();
    am.commit();
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert_eq!(err.code(), "forbidden-edit", "{err}");
    assert!(err.to_string().contains("the calls map"), "{err}");
}

/// A schema 1 document (no buckets yet) still takes flat entries, and after the
/// server's upgrade a call kept there stays there: a map for it is refused.
#[test]
fn a_call_kept_in_the_flat_map_gets_no_map_after_the_upgrade() {
    let mut w = World::new();
    w.server = schema_one_customer(&sample_customer(), START, actor("server"));
    w.requested("call-1");
    let am = w.server.automerge();
    assert!(
        automerge::ReadDoc::get(am, automerge::ROOT, "calls")
            .unwrap()
            .is_none()
    );
    assert_eq!(
        automerge::ReadDoc::map_range(am, flat_events(am), ..).count(),
        1
    );

    assert!(w.server.upgrade(START).unwrap());
    assert!(
        !w.server.upgrade(START).unwrap(),
        "upgrading twice writes nothing"
    );
    assert_eq!(w.server.schema().unwrap(), 2);
    // The phone starts the call: it knows the call from the flat map, and writes
    // there.
    let mut p = w.replica("phone-1");
    let started = w.event(&phone(), "call-1", EventKind::Started);
    w.record(&mut p, started.clone());
    assert!(call_map(p.automerge(), "call-1").is_none());
    assert_eq!(w.offer(&mut p, &phone()).unwrap(), vec![started]);
    // A forged map for it is refused.
    let mut d = w.replica("desk-1");
    let late = w.event(&desk(), "call-1", EventKind::BrowserEnded);
    create_map_raw(&mut d, call_bucket(&late.call), &late);
    let err = w.offer(&mut d, &desk()).unwrap_err();
    assert!(
        err.to_string()
            .contains("whose events are in the events map"),
        "{err}"
    );
}

#[test]
fn a_new_call_on_an_upgraded_schema_one_document_gets_its_own_map() {
    let mut w = World::new();
    w.server = schema_one_customer(&sample_customer(), START, actor("server"));
    assert!(w.server.upgrade(START).unwrap());
    w.requested("call-2");
    let am = w.server.automerge();
    assert!(call_map(am, "call-2").is_some());
    assert_eq!(
        automerge::ReadDoc::map_range(am, flat_events(am), ..).count(),
        0
    );
}
