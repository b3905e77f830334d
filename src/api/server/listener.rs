//! The API's accept loop: HTTP/1.1 connections with bounded numbers and times, so local users
//! cannot starve the agent of file descriptors or the API of answers.
//!
//! Every connection is in one of two phases: *waiting* for a complete request head (just
//! accepted, or keep-alive idle after an answer), or *busy* while a handler runs. A waiting
//! connection is closed after [`REQUEST_HEAD_TIMEOUT`]. At [`MAX_CONNECTIONS`], a new
//! connection evicts the one waiting longest; if every connection is busy, the new one is
//! closed at once. A plain accept limit would instead leave a legitimate request queued in the
//! backlog behind an attacker's idle connections; with eviction, 1,100 half-sent requests cost
//! the agent at most [`MAX_CONNECTIONS`] descriptors and `mesh status` still answers at once.
//! Busy connections stay bounded because the slow requests (long polls) take a slot from a
//! pool smaller than [`MAX_CONNECTIONS`] (see `guard`); the rest answer in milliseconds.
//!
//! Owns: accepting, the connection table, eviction ([`pick_victim`], sans-IO), the head
//! timeout, graceful shutdown. Does not own routing or request checks.

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
use tokio::sync::Notify;
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

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let epoch = Instant::now();
    let table = Arc::new(Mutex::new(Table::default()));
    let all_closed = Arc::new(Notify::new());
    loop {
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
        let admitted = {
            let mut t = table
                .lock()
                .expect("the connection table lock is never poisoned");
            admit(&mut t, limits.max_connections, epoch)
        };
        let Some((id, activity, evict)) = admitted else {
            drop(stream);
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            Connection {
                id,
                activity,
                evict,
                shutdown: shutdown.clone(),
                head_timeout: limits.request_head_timeout,
                epoch,
                table: table.clone(),
                all_closed: all_closed.clone(),
            },
        ));
    }
    // Stop accepting; each connection finishes its answer in progress, then closes.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        loop {
            let notified = all_closed.notified();
            if table.lock().map(|t| t.conns.is_empty()).unwrap_or(true) {
                return;
            }
            notified.await;
        }
    })
    .await;
    Ok(())
}

/// Makes room in the table (evicting if full) and registers a new connection; `None` when
/// every connection is busy.
fn admit(
    t: &mut Table,
    max: usize,
    epoch: Instant,
) -> Option<(u64, Arc<Activity>, CancellationToken)> {
    if t.conns.len() >= max {
        let views = t.conns.iter().map(|(id, e)| ConnView {
            id: *id,
            busy: e.activity.busy.load(Ordering::SeqCst) > 0,
            waiting_since_ms: e.activity.waiting_since_ms.load(Ordering::SeqCst),
        });
        match pick_victim(views) {
            Some(victim) => {
                if let Some(entry) = t.conns.remove(&victim) {
                    entry.evict.cancel();
                }
                t.evicted += 1;
                if t.evicted.is_power_of_two() {
                    tracing::warn!(
                        evicted = t.evicted,
                        max,
                        "control API: connection table full; closing connections that sent no \
                         request"
                    );
                }
            }
            None => {
                t.refused += 1;
                if t.refused.is_power_of_two() {
                    tracing::warn!(
                        refused = t.refused,
                        max,
                        "control API: every connection is busy; refusing new ones"
                    );
                }
                return None;
            }
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

/// What one connection task needs besides its stream and router.
struct Connection {
    id: u64,
    activity: Arc<Activity>,
    evict: CancellationToken,
    shutdown: CancellationToken,
    head_timeout: Duration,
    epoch: Instant,
    table: Arc<Mutex<Table>>,
    all_closed: Arc<Notify>,
}

async fn serve_connection(stream: TcpStream, router: Router, c: Connection) {
    // Answers are small and written whole: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let activity = c.activity.clone();
    let epoch = c.epoch;
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
        let deadline = head_deadline(&c.activity, c.epoch, c.head_timeout);
        tokio::select! {
            biased;
            _ = c.evict.cancelled() => break,
            _ = c.shutdown.cancelled(), if !draining => {
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
                if Instant::now() >= head_deadline(&c.activity, c.epoch, c.head_timeout)
                    && c.activity.busy.load(Ordering::SeqCst) == 0
                {
                    break;
                }
            }
        }
    }
    if let Ok(mut t) = c.table.lock() {
        t.conns.remove(&c.id);
        if t.conns.is_empty() {
            c.all_closed.notify_waiters();
        }
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

    #[tokio::test]
    async fn a_full_table_makes_room_by_eviction_or_refuses_when_all_are_busy() {
        let epoch = Instant::now();
        let mut t = Table::default();
        let (a, a_activity, a_evict) = admit(&mut t, 2, epoch).unwrap();
        let (_b, b_activity, b_evict) = admit(&mut t, 2, epoch).unwrap();
        b_activity.busy.store(1, Ordering::SeqCst);
        // Full: the waiting one (a) goes, the busy one (b) stays.
        let (c, c_activity, _) = admit(&mut t, 2, epoch).unwrap();
        assert!(a_evict.is_cancelled());
        assert!(!b_evict.is_cancelled());
        assert!(!t.conns.contains_key(&a));
        assert!(t.conns.contains_key(&c));
        c_activity.busy.store(1, Ordering::SeqCst);
        assert!(admit(&mut t, 2, epoch).is_none(), "every slot busy");
        assert_eq!((t.evicted, t.refused), (1, 1));
        drop(a_activity);
    }
}
