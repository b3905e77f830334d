//! The API's accept loop: HTTP/1.1 connections with bounded numbers and times, so local users
//! cannot starve the agent of file descriptors or the API of answers.
//!
//! Every connection is in one of two phases: *waiting* for a complete request head (just
//! accepted, or keep-alive idle after an answer), or *busy* while a handler runs. A waiting
//! connection is closed after [`REQUEST_HEAD_TIMEOUT`].
//!
//! At [`MAX_CONNECTIONS`], a newcomer whose complete request head is already in its socket
//! buffer (a CLI call that queued behind others) evicts the connection waiting longest. One
//! that has sent less goes on probation (at most [`MAX_PROBATION`] for [`PROBATION`]) and is
//! admitted the same way once its head is complete, else closed. With every probation slot
//! taken the loop stops accepting, so a flood waits in the kernel's accept queue (where a
//! client's head arrives while it waits) and is drained at a rate the agent sets, not the
//! attacker. A plain accept limit would instead leave a legitimate request queued behind an
//! attacker's idle connections until they time out. Measured: with 1,100 half-sent requests
//! held by an unprivileged user (reconnecting whenever closed) against an agent limited to
//! 1,024 descriptors, `mesh status` answers in ~0.35 s (BENCHMARKS.md).
//!
//! Busy connections stay bounded because the slow requests (long polls) take a slot from a
//! pool smaller than [`MAX_CONNECTIONS`] (see `guard`); the rest answer in milliseconds.
//!
//! Owns: accepting, the connection table, admission and eviction ([`admit_decision`],
//! [`pick_victim`], sans-IO), the head timeout, graceful shutdown. Does not own routing or request checks.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most connections open at once. Legitimate use is a handful (CLI calls, a few `--watch`
/// followers, a dashboard); 256 keeps the API's share of a default 1,024-descriptor limit to a
/// quarter, leaving the rest to QUIC, service logs and the state file.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest a connection may wait for a complete request head, from accept or from its last
/// answer (keep-alive idle), in seconds. The CLI sends its request at once; `mesh logs -f`
/// polls every 0.5 s. Short, so half-sent requests free their slot quickly even without
/// eviction.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Most long polls (`/v1/peers?wait=`, `/v1/events?wait_ms=`) waiting at once. A quarter of
/// [`MAX_CONNECTIONS`]: waiting requests cannot be evicted, so they must never fill the table.
pub const MAX_LONG_POLLS: usize = 64;
/// Read buffer of a connection, in bytes: bounds a request head (hyper answers 431 past it)
/// and the memory of a slow sender; the largest head the CLI sends is well under 1 KiB.
const MAX_READ_BUFFER: usize = 16 * 1024;
/// Accept queue of the API socket (connections the kernel completed, not yet accepted). An
/// attacker's connections wait there too, and a full queue drops a newcomer's SYN, which
/// costs it a 1 s retransmission: measured with 1,100 churning half-sent connections and
/// the default 1,024. The kernel caps it at `net.core.somaxconn` (4,096 by default).
const LISTEN_BACKLOG: i32 = 4096;
/// Bytes of a newcomer's buffer looked at for a complete request head when the table is
/// full: the CLI's heads are ~200 bytes; a longer head simply waits for a free slot.
const HEAD_PEEK_BYTES: usize = 2048;
/// Newcomers held at most at once while the table is full, waiting for a complete request
/// head (their connect won the race with their write). When all are taken, the loop stops
/// accepting until one frees up: further connections wait in the kernel's accept queue, where
/// a client's head arrives while it waits, and the attacker's are taken in at most
/// `MAX_PROBATION / PROBATION` per second (2,560/s) instead of as fast as it reconnects.
const MAX_PROBATION: usize = 128;
/// Longest a newcomer waits on probation for its complete head. The CLI's follows its connect
/// within a millisecond or so (ureq connects in a helper thread, then writes); 1,100 attacker
/// connections then drain through probation in ~0.3 s.
const PROBATION: Duration = Duration::from_millis(50);
/// How often a newcomer on probation with part of a head is looked at again.
const PROBATION_POLL: Duration = Duration::from_millis(2);
/// Pause after a failed accept (e.g. EMFILE): without it the loop would spin on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How long shutdown waits for answers in progress before it returns anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The limits of one server; [`Default`] holds the constants above. Tests shrink them.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub request_head_timeout: Duration,
    pub max_long_polls: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            request_head_timeout: REQUEST_HEAD_TIMEOUT,
            max_long_polls: MAX_LONG_POLLS,
        }
    }
}

/// What the accept loop sees of one connection, updated by its request handling.
#[derive(Debug)]
struct Activity {
    /// Requests whose handler is running (0 or 1: HTTP/1 answers in order).
    busy: AtomicU32,
    /// When it last started waiting for a request head, in ms since the server started.
    waiting_since_ms: AtomicU64,
}

/// Marks a connection busy while it lives (a handler runs); waiting again when dropped.
struct BusyGuard {
    activity: Arc<Activity>,
    epoch: Instant,
}

impl BusyGuard {
    fn new(activity: Arc<Activity>, epoch: Instant) -> Self {
        activity.busy.fetch_add(1, Ordering::SeqCst);
        Self { activity, epoch }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.activity
            .waiting_since_ms
            .store(ms_since(self.epoch), Ordering::SeqCst);
        self.activity.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One row of the connection table as [`pick_victim`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnView {
    pub id: u64,
    pub busy: bool,
    pub waiting_since_ms: u64,
}

/// The connection to evict for a new one: the one waiting longest for a request head (ties:
/// the oldest id); none while every connection is busy.
pub fn pick_victim(conns: impl IntoIterator<Item = ConnView>) -> Option<u64> {
    conns
        .into_iter()
        .filter(|c| !c.busy)
        .min_by_key(|c| (c.waiting_since_ms, c.id))
        .map(|c| c.id)
}

/// What to do with a newly accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Room in the table.
    Admit,
    /// Full: close connection `id` (waiting longest), then admit.
    Evict(u64),
    /// Full: close the newcomer.
    Refuse,
}

/// The admission of a newcomer: below the limit always; at the limit only if its request
/// head is complete already (`head_ready`) and some connection is waiting to be evicted.
pub fn admit_decision(full: bool, head_ready: bool, victim: Option<u64>) -> Admission {
    match (full, head_ready, victim) {
        (false, _, _) => Admission::Admit,
        (true, true, Some(id)) => Admission::Evict(id),
        (true, _, _) => Admission::Refuse,
    }
}

/// Whether `stream`'s receive buffer already holds a complete request head. Peeks through a
/// duplicate descriptor (`std`'s `peek` is safe code; tokio's needs the reactor's readiness,
/// which a just-accepted socket may not have yet); `false` on any error.
fn head_ready(stream: &TcpStream) -> bool {
    use std::os::fd::AsFd;
    let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
        return false;
    };
    let peer = std::net::TcpStream::from(fd);
    let mut buf = [0u8; HEAD_PEEK_BYTES];
    match peer.peek(&mut buf) {
        Ok(n) => buf[..n].windows(4).any(|w| w == b"\r\n\r\n"),
        Err(_) => false,
    }
}

struct Entry {
    activity: Arc<Activity>,
    evict: CancellationToken,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    conns: BTreeMap<u64, Entry>,
    /// Connections closed to make room (for the log).
    evicted: u64,
    /// Connections closed at once because every slot was busy.
    refused: u64,
}

/// What the accept loop and its probation tasks share.
struct Shared {
    router: Router,
    limits: ServeLimits,
    epoch: Instant,
    table: Mutex<Table>,
    all_closed: Notify,
    shutdown: CancellationToken,
    /// Slots for newcomers waiting for their request head while the table is full.
    probation: Arc<Semaphore>,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .expect("the connection table lock is never poisoned")
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Listening again only resizes the accept queue of the bound socket.
    if let Err(e) = socket2::SockRef::from(&listener).listen(LISTEN_BACKLOG) {
        tracing::warn!(error = %e, "control API: cannot enlarge the accept queue");
    }
    let shared = Arc::new(Shared {
        router,
        limits,
        epoch: Instant::now(),
        table: Mutex::new(Table::default()),
        all_closed: Notify::new(),
        shutdown: shutdown.clone(),
        probation: Arc::new(Semaphore::new(MAX_PROBATION)),
    });
    loop {
        // With the table full, a newcomer may need probation: take its slot before accepting,
        // so that a flood waits in the accept queue rather than in the agent.
        let full = shared.table().conns.len() >= limits.max_connections;
        let slot = if full {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                slot = shared.probation.clone().acquire_owned() => {
                    Some(slot.expect("the probation semaphore is never closed"))
                }
            }
        } else {
            None
        };
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control API: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Peeking costs three system calls: only when the table is full.
        let full = shared.table().conns.len() >= limits.max_connections;
        if full && !head_ready(&stream) {
            if let Some(slot) = slot {
                tokio::spawn(probation(stream, slot, shared.clone()));
            }
            continue;
        }
        start_connection(stream, full, &shared);
        // Let the new connection read its request head before the next accept: a client that
        // sent it at once is then busy (not evictable) before a flood of later connections
        // can push it out of the table.
        tokio::task::yield_now().await;
    }
    // Stop accepting; each connection finishes its answer in progress, then closes.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        loop {
            let notified = shared.all_closed.notified();
            if shared.table().conns.is_empty() {
                return;
            }
            notified.await;
        }
    })
    .await;
    Ok(())
}

/// Admits `stream` (see [`admit`]) and spawns its connection task; drops (closes) it if
/// refused.
fn start_connection(stream: TcpStream, head_ready: bool, shared: &Arc<Shared>) {
    let admitted = admit(
        &mut shared.table(),
        shared.limits.max_connections,
        head_ready,
        shared.epoch,
    );
    let Some((id, activity, evict)) = admitted else {
        return;
    };
    tokio::spawn(serve_connection(
        stream,
        Connection {
            id,
            activity,
            evict,
            shared: shared.clone(),
        },
    ));
}

/// A newcomer on probation (holding `slot`): admitted (evicting) once its head is complete,
/// closed if it is not within [`PROBATION`].
async fn probation(stream: TcpStream, slot: OwnedSemaphorePermit, shared: Arc<Shared>) {
    let ready = tokio::time::timeout(PROBATION, wait_for_head(&stream))
        .await
        .unwrap_or(false);
    drop(slot);
    if ready {
        start_connection(stream, true, &shared);
    }
}

/// Waits until `stream` holds a complete request head. Readiness stays set while unread data
/// waits, so a partial head is looked at again every [`PROBATION_POLL`], not in a spin.
async fn wait_for_head(stream: &TcpStream) -> bool {
    loop {
        if stream.readable().await.is_err() {
            return false;
        }
        if head_ready(stream) {
            return true;
        }
        tokio::time::sleep(PROBATION_POLL).await;
    }
}

/// Makes room in the table (evicting if full and the newcomer's head is ready) and registers
/// a new connection; `None` when it is refused.
fn admit(
    t: &mut Table,
    max: usize,
    head_ready: bool,
    epoch: Instant,
) -> Option<(u64, Arc<Activity>, CancellationToken)> {
    let full = t.conns.len() >= max;
    let victim = if full && head_ready {
        pick_victim(t.conns.iter().map(|(id, e)| ConnView {
            id: *id,
            busy: e.activity.busy.load(Ordering::SeqCst) > 0,
            waiting_since_ms: e.activity.waiting_since_ms.load(Ordering::SeqCst),
        }))
    } else {
        None
    };
    match admit_decision(full, head_ready, victim) {
        Admission::Admit => {}
        Admission::Evict(id) => {
            if let Some(entry) = t.conns.remove(&id) {
                entry.evict.cancel();
            }
            t.evicted += 1;
            if t.evicted.is_power_of_two() {
                tracing::warn!(
                    evicted = t.evicted,
                    max,
                    "control API: connection table full; closed connections that sent no \
                     complete request, for ones that did"
                );
            }
        }
        Admission::Refuse => {
            t.refused += 1;
            if t.refused.is_power_of_two() {
                tracing::warn!(
                    refused = t.refused,
                    max,
                    "control API: connection table full; closed new connections at once"
                );
            }
            return None;
        }
    }
    let id = t.next_id;
    t.next_id += 1;
    let activity = Arc::new(Activity {
        busy: AtomicU32::new(0),
        waiting_since_ms: AtomicU64::new(ms_since(epoch)),
    });
    let evict = CancellationToken::new();
    t.conns.insert(
        id,
        Entry {
            activity: activity.clone(),
            evict: evict.clone(),
        },
    );
    Some((id, activity, evict))
}

/// What one connection task needs besides its stream.
struct Connection {
    id: u64,
    activity: Arc<Activity>,
    evict: CancellationToken,
    shared: Arc<Shared>,
}

async fn serve_connection(stream: TcpStream, c: Connection) {
    let router = c.shared.router.clone();
    let epoch = c.shared.epoch;
    let head_timeout = c.shared.limits.request_head_timeout;
    // Answers are small and written whole: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let activity = c.activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = BusyGuard::new(activity.clone(), epoch);
        let mut router = router.clone();
        async move {
            let response = tower_service::Service::<Request>::call(
                &mut router,
                request.map(axum::body::Body::new),
            )
            .await;
            drop(busy);
            response.map_err(|never: Infallible| match never {})
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_READ_BUFFER)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        let deadline = head_deadline(&c.activity, epoch, head_timeout);
        tokio::select! {
            biased;
            _ = c.evict.cancelled() => {
                tracing::debug!(id = c.id, "control API connection evicted");
                break;
            }
            _ = c.shared.shutdown.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "control API connection ended");
                }
                break;
            }
            _ = tokio::time::sleep_until(deadline) => {
                if Instant::now() >= head_deadline(&c.activity, epoch, head_timeout)
                    && c.activity.busy.load(Ordering::SeqCst) == 0
                {
                    tracing::debug!(id = c.id, "control API connection: no request head in time");
                    break;
                }
            }
        }
    }
    let mut t = c.shared.table();
    t.conns.remove(&c.id);
    if t.conns.is_empty() {
        c.shared.all_closed.notify_waiters();
    }
}

/// When a waiting connection must have sent its request head; a busy one is looked at again
/// one timeout later.
fn head_deadline(activity: &Activity, epoch: Instant, timeout: Duration) -> Instant {
    if activity.busy.load(Ordering::SeqCst) > 0 {
        return Instant::now() + timeout;
    }
    let since = Duration::from_millis(activity.waiting_since_ms.load(Ordering::SeqCst));
    epoch + since + timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: u64, busy: bool, waiting_since_ms: u64) -> ConnView {
        ConnView {
            id,
            busy,
            waiting_since_ms,
        }
    }

    #[test]
    fn the_connection_waiting_longest_is_evicted_never_a_busy_one() {
        assert_eq!(
            pick_victim([view(1, true, 0), view(2, false, 30), view(3, false, 10)]),
            Some(3)
        );
        // Ties go to the oldest connection.
        assert_eq!(
            pick_victim([view(5, false, 10), view(4, false, 10)]),
            Some(4)
        );
        assert_eq!(pick_victim([view(1, true, 0), view(2, true, 0)]), None);
        assert_eq!(pick_victim([]), None);
    }

    #[test]
    fn a_full_table_admits_only_complete_heads_and_never_evicts_a_busy_connection() {
        assert_eq!(admit_decision(false, false, None), Admission::Admit);
        assert_eq!(admit_decision(true, true, Some(3)), Admission::Evict(3));
        assert_eq!(admit_decision(true, false, Some(3)), Admission::Refuse);
        assert_eq!(admit_decision(true, true, None), Admission::Refuse);
    }

    #[tokio::test]
    async fn a_full_table_makes_room_by_eviction_or_refuses() {
        let epoch = Instant::now();
        let mut t = Table::default();
        let (a, _a_activity, a_evict) = admit(&mut t, 2, false, epoch).unwrap();
        let (_b, b_activity, b_evict) = admit(&mut t, 2, false, epoch).unwrap();
        b_activity.busy.store(1, Ordering::SeqCst);
        assert!(
            admit(&mut t, 2, false, epoch).is_none(),
            "half a head: refused"
        );
        // A complete head: the waiting one (a) goes, the busy one (b) stays.
        let (c, c_activity, _) = admit(&mut t, 2, true, epoch).unwrap();
        assert!(a_evict.is_cancelled());
        assert!(!b_evict.is_cancelled());
        assert!(!t.conns.contains_key(&a));
        assert!(t.conns.contains_key(&c));
        c_activity.busy.store(1, Ordering::SeqCst);
        assert!(admit(&mut t, 2, true, epoch).is_none(), "every slot busy");
        assert_eq!((t.evicted, t.refused), (1, 2));
    }

    #[tokio::test]
    async fn a_complete_head_is_seen_in_the_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut half = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut half, b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        let (accepted_half, _) = listener.accept().await.unwrap();
        let mut whole = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut whole, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (accepted_whole, _) = listener.accept().await.unwrap();
        assert!(!head_ready(&accepted_half));
        assert!(head_ready(&accepted_whole));
        // Peeking consumed nothing.
        assert!(head_ready(&accepted_whole));
    }
}
