//! A customer document is one object history: documents created independently
//! under the same id, or of another customer, are refused rather than merged into
//! something replicas would read differently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callsync_core::{
    ActorId, CoreError, CustomerDoc, CustomerId, NewCustomer, PhoneEntry, PhoneNumber, TenantId,
    Timestamp, UserId,
};

fn new_customer(id: &str) -> NewCustomer {
    NewCustomer {
        tenant: TenantId::new("tenant-a").unwrap(),
        id: CustomerId::new(id).unwrap(),
        company: "株式会社さくら物産".into(),
        contact: "佐藤 健一".into(),
        owner: UserId::new("rep@a.example").unwrap(),
        phones: vec![PhoneEntry {
            label: "代表".into(),
            number: PhoneNumber::parse("03-1234-5678").unwrap(),
        }],
    }
}

fn create(id: &str, actor: &[u8]) -> CustomerDoc {
    CustomerDoc::create(
        &new_customer(id),
        Timestamp::from_millis(1_795_482_000_000),
        ActorId::from(actor),
    )
    .unwrap()
}

#[test]
fn merging_another_customers_document_is_refused() {
    let mut a = create("cus-0001", b"a");
    let mut b = create("cus-0002", b"b");
    let err = a.merge(&mut b).unwrap_err();
    assert!(matches!(err, CoreError::DifferentDocument { .. }), "{err}");
    assert_eq!(a.customer().unwrap().id.as_str(), "cus-0001");
}

#[test]
fn merging_an_independently_created_document_of_the_same_customer_is_refused() {
    let mut a = create("cus-0001", b"a");
    let mut b = create("cus-0001", b"b");
    let err = a.merge(&mut b).unwrap_err();
    assert!(matches!(err, CoreError::DifferentDocument { .. }), "{err}");
}

#[test]
fn a_replica_whose_root_was_replaced_underneath_reports_it_instead_of_reading_stale_events() {
    let mut a = create("cus-0001", b"a");
    let mut b = create("cus-0001", b"b");
    // A raw Automerge merge (as sync would do) bypasses the check above; one of the
    // two `events` maps now hides the other.
    a.automerge_mut().merge(b.automerge_mut()).unwrap();
    b.automerge_mut().merge(a.automerge_mut()).unwrap();
    let outcomes = [a.customer(), b.customer()];
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(CoreError::DifferentDocument { .. })))
        .count();
    assert_eq!(
        refused, 1,
        "exactly the replica whose map lost must refuse: {outcomes:?}"
    );
}
