//! The same reconnect workload run through `samod` (the Rust automerge-repo), in
//! the same process as our figures, so the two sets of numbers share a machine
//! and a moment.
//!
//! Two `samod` repos, a "server" and a "phone", both with samod's in-memory
//! storage (its fastest; ours writes every document to SQLite), joined over TCP
//! on loopback with samod's own length-delimited framing. The phone first
//! fetches every document (the equivalent of our prepared "caught up" replica),
//! then for each scenario the phone disconnects, changes happen, and the phone
//! dials again. "Converged" means what automerge-repo itself can tell: for every
//! document, the phone holds everything the server advertised and the server
//! holds everything the phone has, on the new connection. The documents and the
//! ten changes are the same customer documents and call events as our run.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use automerge::{ActorId, Automerge};
use callsync_core::{
    CallEvent, CallId, CustomerDoc, DeviceId, DeviceKind, EventId, EventKind, NewCustomer,
    PhoneNumber, ResultCatalog, RuleContext, Stamp, UserId,
};
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use samod::{BackoffConfig, DialError, Dialer, DocHandle, Repo, Transport};
use serde_json::{Value, json};

use super::now;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Bytes read and written through one side of the connection.
#[derive(Default)]
struct Counters {
    read: AtomicU64,
    written: AtomicU64,
}

impl Counters {
    fn total(&self) -> u64 {
        self.read.load(Ordering::Relaxed) + self.written.load(Ordering::Relaxed)
    }
}

/// A TCP stream that counts what crosses it.
struct Counted {
    inner: TcpStream,
    counters: Arc<Counters>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.counters.read.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counters
                .written
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Dials the server over TCP and counts every byte on the phone's side.
struct CountingDialer {
    server: SocketAddr,
    counters: Arc<Counters>,
}

impl Dialer for CountingDialer {
    type Error = std::io::Error;

    fn url(&self) -> url::Url {
        url::Url::parse(&format!("tcp://{}", self.server)).unwrap()
    }

    fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<Self::Error>>> {
        let (server, counters) = (self.server, self.counters.clone());
        async move {
            let inner = TcpStream::connect(server)
                .await
                .map_err(DialError::transient)?;
            inner.set_nodelay(true).map_err(DialError::transient)?;
            Ok(Transport::from_tokio_io(Counted { inner, counters }))
        }
        .boxed()
    }
}

/// Records one call event on a samod document the way our engine would, and
/// returns the size of the change it made.
fn record(handle: &DocHandle, actor: &ActorId, event: CallEvent) -> usize {
    handle.with_document(|doc: &mut Automerge| {
        let mut customer = CustomerDoc::load(&doc.save(), actor.clone()).unwrap();
        let heads = customer.heads();
        let catalog = ResultCatalog::standard();
        let mut rules = RuleContext::new(&catalog);
        rules.start_limit_ms = 3_600_000;
        customer.record(event, &rules).unwrap();
        let change = customer.save_after(&heads);
        doc.load_incremental(&change).unwrap();
        change.len()
    })
}

fn event(device: &DeviceId, kind: DeviceKind, call: &str, kind_of: EventKind) -> CallEvent {
    CallEvent {
        id: EventId::new(format!("ev-{device}-{call}")).unwrap(),
        call: CallId::new(call).unwrap(),
        stamp: Stamp {
            at: now(),
            device: device.clone(),
            device_kind: kind,
            user: UserId::new(super::OWNER).unwrap(),
            device_at: None,
        },
        kind: kind_of,
    }
}

/// Asserts that the phone and the server hold the same heads for each changed
/// document (so the timings above are for a real convergence).
fn assert_converged(phone: &[DocHandle], server: &[DocHandle], changed: &[usize]) {
    for &i in changed {
        let (phone_heads, server_heads) = (
            phone[i].with_document(|d| d.get_heads()),
            server[i].with_document(|d| d.get_heads()),
        );
        assert_eq!(phone_heads, server_heads, "document {i} did not converge");
    }
}

/// Dials the server, waits until every document has converged on the new
/// connection, then disconnects; returns (ms, bytes both ways, ms until the
/// changed documents had converged).
async fn reconnect(
    phone: &Repo,
    server: SocketAddr,
    handles: &[DocHandle],
    changed: &[usize],
) -> (f64, u64, f64) {
    let counters = Arc::new(Counters::default());
    let t = Instant::now();
    let dialer = phone
        .dial(
            BackoffConfig::default(),
            Arc::new(CountingDialer {
                server,
                counters: counters.clone(),
            }),
        )
        .unwrap();
    dialer.established().await.unwrap();
    let conn = dialer.connection_id().unwrap();
    let changed_arrived = join_all(changed.iter().map(|&i| {
        let (have, gave) = (
            handles[i].we_have_their_changes(conn),
            handles[i].they_have_our_changes(conn),
        );
        async move { futures::join!(have, gave) }
    }));
    let changed_ms = if changed.is_empty() {
        0.0
    } else {
        changed_arrived.await;
        t.elapsed().as_secs_f64() * 1e3
    };
    join_all(handles.iter().map(|h| {
        let (have, gave) = (h.we_have_their_changes(conn), h.they_have_our_changes(conn));
        async move { futures::join!(have, gave) }
    }))
    .await;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    // Anything still in flight (a last acknowledgement) is part of the cost.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bytes = counters.total();
    dialer.close();
    tokio::time::sleep(Duration::from_millis(100)).await;
    (ms, bytes, changed_ms)
}

/// Runs the workload with `docs` documents and `changed` of them changed, and
/// returns the figures as JSON.
pub(crate) async fn run(docs: usize, changed: usize, runs: usize) -> Value {
    let build = Instant::now();
    let server = Repo::build_tokio().load().await;
    let phone = Repo::build_tokio().load().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server
        .make_acceptor(url::Url::parse(&format!("tcp://{addr}")).unwrap())
        .unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            io.set_nodelay(true).unwrap();
            if acceptor.accept_tokio_io(io).is_err() {
                break;
            }
        }
    });

    let tenant = callsync_core::TenantId::new("bench").unwrap();
    let server_actor = ActorId::random();
    let mut server_handles = Vec::with_capacity(docs);
    for i in 0..docs {
        let new: NewCustomer = super::customer(&tenant, i);
        let mut customer = CustomerDoc::create(&new, now(), server_actor.clone()).unwrap();
        let doc = Automerge::load(&customer.save()).unwrap();
        server_handles.push(server.create(doc).await.unwrap());
    }
    // The phone fetches everything once: the caught-up starting point, and
    // samod's figure for a fresh device.
    let counters = Arc::new(Counters::default());
    let fetch = Instant::now();
    let dialer = phone
        .dial(
            BackoffConfig::default(),
            Arc::new(CountingDialer {
                server: addr,
                counters: counters.clone(),
            }),
        )
        .unwrap();
    dialer.established().await.unwrap();
    let mut handles = Vec::with_capacity(docs);
    for chunk in server_handles.chunks(500) {
        let found = join_all(chunk.iter().map(|h| phone.find(h.document_id().clone()))).await;
        handles.extend(found.into_iter().map(|h| h.unwrap().unwrap()));
    }
    let initial_fetch_ms = fetch.elapsed().as_secs_f64() * 1e3;
    let initial_bytes = counters.total();
    dialer.close();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let setup_s = build.elapsed().as_secs_f64();
    eprintln!("samod, {docs} documents: set up in {setup_s:.1} s");

    let mut zero = Vec::with_capacity(runs);
    let mut zero_bytes = 0;
    for _ in 0..runs {
        let (ms, bytes, _) = reconnect(&phone, addr, &handles, &[]).await;
        eprintln!("samod, {docs} documents: reconnect with nothing changed, {ms:.0} ms");
        zero.push(ms);
        zero_bytes = bytes;
    }

    // Ten documents change on the server while the phone is away: a desk's
    // call request on each.
    let desk = DeviceId::new("desk-bench").unwrap();
    let phone_device = DeviceId::new("phone-bench").unwrap();
    let which: Vec<usize> = (0..changed).collect();
    let desk_actor = ActorId::random();
    let mut server_changed_bytes = 0;
    for &i in &which {
        let kind = EventKind::Requested {
            destination: PhoneNumber::parse("03-1234-5678").unwrap(),
            origin: phone_device.clone(),
            recording: true,
        };
        let request = event(&desk, DeviceKind::Desk, &format!("call-{i}"), kind);
        server_changed_bytes += record(&server_handles[i], &desk_actor, request);
    }
    let (server10_ms, server10_bytes, server10_changed_ms) =
        reconnect(&phone, addr, &handles, &which).await;
    assert_converged(&handles, &server_handles, &which);

    // The phone, offline, starts those ten calls.
    let phone_actor = ActorId::random();
    let mut phone_changed_bytes = 0;
    for &i in &which {
        let start = event(
            &phone_device,
            DeviceKind::Phone,
            &format!("call-{i}"),
            EventKind::Started,
        );
        phone_changed_bytes += record(&handles[i], &phone_actor, start);
    }
    let (phone10_ms, phone10_bytes, phone10_changed_ms) =
        reconnect(&phone, addr, &handles, &which).await;
    assert_converged(&handles, &server_handles, &which);
    phone.stop().await;
    server.stop().await;

    json!({
        "docs": docs,
        "transport": "TCP on loopback, samod's length-delimited framing",
        "storage": "samod in-memory",
        "setup_s": setup_s,
        "initial_fetch_ms": initial_fetch_ms,
        "initial_fetch_wire_bytes": initial_bytes,
        "reconnect_0": {
            "ms_median": super::median(zero.clone()), "ms_runs": zero, "wire_bytes": zero_bytes,
        },
        "reconnect_server_10": {
            "ms": server10_ms, "changed_docs_ms": server10_changed_ms,
            "wire_bytes": server10_bytes, "changed_bytes": server_changed_bytes,
        },
        "reconnect_phone_10": {
            "ms": phone10_ms, "changed_docs_ms": phone10_changed_ms,
            "wire_bytes": phone10_bytes, "changed_bytes": phone_changed_bytes,
        },
    })
}
