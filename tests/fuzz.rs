//! Fuzz targets for every decoder that takes bytes from the network or the disk, run with
//! [bolero](https://docs.rs/bolero): under `cargo test` (stable) each target replays its corpus
//! and then feeds random inputs for a short time; with `cargo bolero` (nightly) the same
//! targets run under libFuzzer. See `fuzz/README.md` for long runs.
//!
//! Each target takes two kinds of input, chosen by the first generated value:
//! - raw bytes, straight into the decoder (finds what a hostile peer's garbage does);
//! - a real encoded message (seeds built here from real nodes' traffic, documents and specs)
//!   with a few byte-level mutations (flips, overwrites, inserts, deletes, truncation), which
//!   gets past the outer framing and reaches the deep parts of a decoder.
//!
//! A target fails on a panic (including arithmetic overflow: tests build with debug
//! assertions), a hang, or a broken property stated in the target. The mDNS TXT target lives
//! with the private record classifier in `src/discovery/mdns.rs`.
//!
//! Budget: `SHORT_RUN` per target in the normal suite; `BOLERO_RANDOM_TEST_TIME_MS` (or
//! `BOLERO_RANDOM_ITERATIONS`) overrides it for a long run.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use automerge::{ActorId, AutoCommit};
use bolero::check;
use futures::executor::block_on;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use libp2p::request_response::Codec;
use mesh::api::{ServiceAddRequest, TagRequest};
use mesh::membership::{Membership, MembershipConfig};
use mesh::state::{NodeRecord, genesis, hydrate_lenient, put_entry};
use mesh::supervisor::spec::{ServiceSpec, parse_service_file, validate_set};
use mesh::sync::SyncSessions;
use mesh::transport::{
    JOIN_PROTOCOL, MAX_JOIN_MESSAGE, MAX_MEMBERSHIP_MESSAGE, MAX_QUERY_REQUEST, MAX_QUERY_RESPONSE,
    MAX_SYNC_MESSAGE, MEMBERSHIP_PROTOCOL, QUERY_PROTOCOL, SYNC_PROTOCOL, limited_codec,
};
use mesh::wire::join::{JoinRequest, JoinResponse};
use mesh::wire::membership::{MembershipRequest, MembershipResponse};
use mesh::wire::query::{QueryRequest, QueryResponse};
use mesh::wire::sync::{SyncRequest, SyncResponse};

/// Random-input time per target in the normal suite: twelve targets in a few seconds on 2 cores.
const SHORT_RUN: Duration = Duration::from_millis(300);

/// One byte-level mutation: (kind, position, value). Positions wrap around the input length.
type Mutation = (u8, u16, u8);

/// A generated input: raw bytes, or seed number `which` with `mutations` applied (when there
/// are any mutations).
type Input = (Vec<u8>, u8, Vec<Mutation>);

/// The bytes an [`Input`] stands for, given the target's seeds.
fn bytes_of(input: &Input, seeds: &[Vec<u8>]) -> Vec<u8> {
    let (raw, which, mutations) = input;
    if mutations.is_empty() || seeds.is_empty() {
        return raw.clone();
    }
    let mut bytes = seeds[usize::from(*which) % seeds.len()].clone();
    for &(kind, at, value) in mutations.iter().take(16) {
        let at = if bytes.is_empty() {
            0
        } else {
            usize::from(at) % bytes.len()
        };
        match kind % 6 {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << (value % 8),
            1 if !bytes.is_empty() => bytes[at] = value,
            2 => bytes.insert(at, value),
            3 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            4 => bytes.truncate(at),
            // An interesting value: the ends of the ranges length fields take.
            _ if !bytes.is_empty() => bytes[at] = [0x00, 0x7f, 0x80, 0xff][usize::from(value) % 4],
            _ => {}
        }
    }
    bytes
}

/// Runs a target over [`Input`]s for [`SHORT_RUN`] unless the environment says otherwise.
fn run(seeds: &'static [Vec<u8>], target: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    check!()
        .with_type::<Input>()
        .with_test_time(SHORT_RUN)
        .for_each(|input| target(&bytes_of(input, seeds)));
}

fn peer() -> PeerId {
    Keypair::generate_ed25519().public().to_peer_id()
}

/// CBOR of `value` as the codec writes it on the wire (a request of protocol `P`).
fn cbor_request<Req, Resp>(max: u64, protocol: &libp2p::StreamProtocol, value: Req) -> Vec<u8>
where
    Req: serde::Serialize + serde::de::DeserializeOwned + Send,
    Resp: serde::Serialize + serde::de::DeserializeOwned + Send,
{
    let mut codec = limited_codec::<Req, Resp>(max, max);
    let mut out = futures::io::Cursor::new(Vec::new());
    block_on(codec.write_request(protocol, &mut out, value)).expect("encodes");
    out.into_inner()
}

// ---- membership datagrams ------------------------------------------------------------------

/// Real foca datagrams between two members (joins, probes, acks, gossip) and their CBOR
/// framing, plus the framed leave notices.
fn membership_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let (pa, pb) = (peer(), peer());
        let config = MembershipConfig::lan();
        let mut a = Membership::new(pa, 1, &config, 1);
        let mut b = Membership::new(pb, 2, &config, 2);
        let mut now = Instant::now();
        a.on_admitted(pb, 2, now);
        b.on_admitted(pa, 1, now);
        let mut datagrams = Vec::new();
        for _ in 0..40 {
            now += Duration::from_millis(100);
            a.handle_timers(now);
            b.handle_timers(now);
            let from_a: Vec<_> = a.poll_transmit().collect();
            let from_b: Vec<_> = b.poll_transmit().collect();
            for (_, data) in from_a {
                b.on_datagram(pa, &data, now);
                datagrams.push(data.to_vec());
            }
            for (_, data) in from_b {
                a.on_datagram(pb, &data, now);
                datagrams.push(data.to_vec());
            }
        }
        datagrams.sort();
        datagrams.dedup();
        datagrams.truncate(32);
        let mut seeds = datagrams.clone();
        for d in datagrams.iter().take(8) {
            seeds.push(cbor_request::<MembershipRequest, MembershipResponse>(
                MAX_MEMBERSHIP_MESSAGE,
                &MEMBERSHIP_PROTOCOL,
                MembershipRequest::Datagram(d.clone()),
            ));
        }
        seeds.push(cbor_request::<MembershipRequest, MembershipResponse>(
            MAX_MEMBERSHIP_MESSAGE,
            &MEMBERSHIP_PROTOCOL,
            MembershipRequest::Leave {
                peer: Some(pa.to_bytes()),
                bump: 7,
            },
        ));
        seeds
    })
}

#[test]
fn fuzz_membership_datagram() {
    let seeds = membership_seeds();
    let (local, from) = (peer(), peer());
    run(seeds, |bytes| {
        let mut m = Membership::new(local, 1, &MembershipConfig::lan(), 3);
        let now = Instant::now();
        m.on_admitted(from, 2, now);
        // The framed request as the codec reads it, then the datagram inside (or the bytes
        // themselves, as foca sees them).
        let mut codec = limited_codec::<MembershipRequest, MembershipResponse>(
            MAX_MEMBERSHIP_MESSAGE,
            MAX_MEMBERSHIP_MESSAGE,
        );
        let mut io = futures::io::Cursor::new(bytes);
        match block_on(codec.read_request(&MEMBERSHIP_PROTOCOL, &mut io)) {
            Ok(MembershipRequest::Datagram(data)) => m.on_datagram(from, &data, now),
            Ok(MembershipRequest::Leave { peer, bump }) => {
                if let Some(leaver) = peer.and_then(|p| PeerId::from_bytes(&p).ok()) {
                    m.on_leave_notice(from, leaver, bump, now);
                }
            }
            Err(_) => m.on_datagram(from, bytes, now),
        }
        m.handle_timers(now + Duration::from_secs(1));
        let _ = m.poll_transmit().count();
    });
}

// ---- sync messages -------------------------------------------------------------------------

fn doc_with_nodes(n: usize) -> AutoCommit {
    let mut doc = genesis(ActorId::random());
    for i in 0..n {
        put_entry(
            &mut doc,
            "nodes",
            &format!("n{i}"),
            &NodeRecord {
                name: format!("node-{i}").into(),
                ..Default::default()
            },
        )
        .expect("a record fits");
        doc.commit();
    }
    doc
}

/// The receiving side of the sync target: a document that shares the genesis.
fn sync_base() -> &'static AutoCommit {
    static BASE: OnceLock<AutoCommit> = OnceLock::new();
    BASE.get_or_init(|| doc_with_nodes(2))
}

/// Real sync messages of a first sync between two documents, raw and CBOR-framed.
fn sync_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let (pa, pb) = (peer(), peer());
        let mut da = doc_with_nodes(5);
        let mut db = sync_base().clone();
        let (mut sa, mut sb) = (SyncSessions::new(), SyncSessions::new());
        let now = Instant::now();
        let mut messages = Vec::new();
        let mut next = sa.on_peer_up(pb, &mut da, now).map(|m| (true, m));
        sb.on_peer_up(pa, &mut db, now);
        while let Some((to_b, bytes)) = next.take() {
            messages.push(bytes.clone());
            if messages.len() > 20 {
                break;
            }
            next = if to_b {
                sb.on_message(pa, &mut db, &bytes, now)
                    .expect("a real message applies")
                    .map(|m| (false, m))
            } else {
                sa.on_message(pb, &mut da, &bytes, now)
                    .expect("a real message applies")
                    .map(|m| (true, m))
            };
        }
        let epoch = mesh::state::epoch_of(&mut da);
        let mut seeds = messages.clone();
        for (i, m) in messages.iter().enumerate() {
            seeds.push(cbor_request::<SyncRequest, SyncResponse>(
                MAX_SYNC_MESSAGE,
                &SYNC_PROTOCOL,
                SyncRequest::Sync {
                    epoch: epoch.clone(),
                    message: m.clone(),
                    // Both encodings: without the field (older agents) and with it.
                    everyone: i % 2 == 1,
                },
            ));
        }
        seeds
    })
}

#[test]
fn fuzz_sync_message() {
    let seeds = sync_seeds();
    let from = peer();
    run(seeds, |bytes| {
        let mut doc = sync_base().clone();
        let mut sessions = SyncSessions::new();
        let now = Instant::now();
        let mut codec = limited_codec::<SyncRequest, SyncResponse>(MAX_SYNC_MESSAGE, 1024);
        let mut io = futures::io::Cursor::new(bytes);
        let message = match block_on(codec.read_request(&SYNC_PROTOCOL, &mut io)) {
            Ok(SyncRequest::Sync { message, .. }) => message,
            // Snapshot requests carry no bytes a decoder interprets beyond the codec's.
            Ok(
                SyncRequest::FetchSnapshot
                | SyncRequest::FetchSnapshotPart { .. }
                | SyncRequest::SnapshotOffer { .. },
            ) => return,
            Err(_) => bytes.to_vec(),
        };
        if sessions.on_message(from, &mut doc, &message, now).is_ok() {
            // What the actor does next with an applied message: read the document, answer.
            let _ = hydrate_lenient(&doc);
            let _ = sessions.generate_all(&mut doc, now);
            let saved = doc.save();
            AutoCommit::load(&saved).expect("a document that applied a message saves and loads");
        }
    });
}

// ---- query requests ------------------------------------------------------------------------

fn query_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        [
            QueryRequest::Logs {
                service: "web".into(),
                lines: 50,
                offset: Some(1234),
            },
            QueryRequest::Logs {
                service: "db-primary".into(),
                lines: 5000,
                offset: None,
            },
            QueryRequest::Listening,
            QueryRequest::Events {
                after: Some(9),
                limit: 100,
                wait_ms: 3000,
            },
        ]
        .into_iter()
        .map(|r| cbor_request::<QueryRequest, QueryResponse>(MAX_QUERY_REQUEST, &QUERY_PROTOCOL, r))
        .collect()
    })
}

#[test]
fn fuzz_query_request() {
    let seeds = query_seeds();
    run(seeds, |bytes| {
        let mut codec =
            limited_codec::<QueryRequest, QueryResponse>(MAX_QUERY_REQUEST, MAX_QUERY_RESPONSE);
        let mut io = futures::io::Cursor::new(bytes);
        let Ok(request) = block_on(codec.read_request(&QUERY_PROTOCOL, &mut io)) else {
            return;
        };
        let valid = request.validate().is_ok();
        if let QueryRequest::Logs { service, .. } = &request {
            // A name that passes becomes `LOG_DIR/<name>.log`: it must stay in LOG_DIR.
            assert!(
                !valid || (!service.contains('/') && !service.contains("..")),
                "{service:?} passed validation"
            );
        }
        // The answer path with no supervisor: validation first, never a panic.
        let answer = block_on(mesh::supervisor::query::answer(
            None,
            request,
            Duration::ZERO,
        ));
        if !valid {
            assert!(matches!(answer, QueryResponse::Error(_)));
        }
    });
}

// ---- the state file ------------------------------------------------------------------------

/// A real state file: a full save followed by incremental chunks, as the actor writes it.
fn state_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut doc = doc_with_nodes(2);
        let full = doc.save();
        let mut file = full.clone();
        for i in 0..3 {
            put_entry(
                &mut doc,
                "nodes",
                &format!("late{i}"),
                &NodeRecord::default(),
            )
            .expect("a record fits");
            doc.commit();
            file.extend(doc.save_incremental());
        }
        vec![full, file]
    })
}

#[test]
fn fuzz_state_file() {
    let seeds = state_seeds();
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("doc.automerge");
    let actor = ActorId::random();
    run(seeds, |bytes| {
        // The chunk scanner alone: never past the end, always on a chunk boundary it read.
        let whole = mesh::state::file::whole_chunks_len(bytes);
        assert!(whole <= bytes.len());
        std::fs::write(&path, bytes).expect("write the state file");
        let mut doc = mesh::state::file::load(&path, &actor).doc;
        // What the actor does next with a loaded document.
        let _ = mesh::state::epoch_of(&mut doc);
        let _ = hydrate_lenient(&doc);
        let _ = doc.get_changes(&[]).len();
        // The per-peer sync states file beside it: hex-encoded `sync::State`s.
        let mut sessions = SyncSessions::new();
        let saved = BTreeMap::from([(peer_base58(), bytes.to_vec())]);
        sessions.restore_states(&saved);
    });
}

/// A snapshot a peer sends (`SyncResponse::Snapshot`) when we adopt its newer epoch: loaded,
/// its epoch read, and what only this node knew carried into it, as `adopt` does.
#[test]
fn fuzz_sync_snapshot() {
    let seeds = state_seeds();
    let (old, _) = hydrate_lenient(&doc_with_nodes(1));
    run(seeds, |bytes| {
        let Ok(mut new) = AutoCommit::load(bytes) else {
            return;
        };
        let _ = mesh::state::epoch_of(&mut new);
        let _ = mesh::state::migrate_into(&old, &mut new, "n0");
        let _ = hydrate_lenient(&new);
    });
}

fn peer_base58() -> String {
    static PEER: OnceLock<String> = OnceLock::new();
    PEER.get_or_init(|| peer().to_base58()).clone()
}

// ---- service specs -------------------------------------------------------------------------

fn spec_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds = Vec::new();
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples");
        if let Ok(entries) = std::fs::read_dir(examples) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read(entry.path()) {
                    seeds.push(text);
                }
            }
        }
        seeds.push(
            br#"
[[service]]
name = "db"
command = "sh"
args = ["-c", "exec sleep 1000"]
ports = ["auto", "admin=5433/tcp"]
health = "tcp"
restart = { policy = "on-failure", max_delay = "30s" }

[[service]]
name = "web"
command = "python3"
args = ["-m", "http.server", "$PORT"]
after = ["db"]
ports = ["auto:web"]
health = "http:/healthz"
"#
            .to_vec(),
        );
        seeds.sort();
        seeds
    })
}

#[test]
fn fuzz_service_spec() {
    let seeds = spec_seeds();
    run(seeds, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        // A services file (TOML), validated as a set.
        if let Ok(specs) = parse_service_file(&text) {
            for spec in &specs {
                spec.validate()
                    .expect("a parsed file's specs are each valid");
                // A spec travels as JSON in the document: it must come back equal.
                let json = serde_json::to_vec(spec).expect("a spec serializes");
                let back: ServiceSpec = serde_json::from_slice(&json).expect("and deserializes");
                assert_eq!(&back, spec);
            }
        }
        // A spec as JSON (the document's `spec_json`, written by any peer).
        if let Ok(spec) = serde_json::from_slice::<ServiceSpec>(bytes) {
            let _ = spec.validate();
            let _ = validate_set(std::slice::from_ref(&spec));
            let _ = spec.port_variables();
            let _ = spec.backoff();
        }
    });
}

// ---- API request bodies --------------------------------------------------------------------

fn api_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let spec = ServiceSpec::new("web", "python3");
        vec![
            serde_json::to_vec(&ServiceAddRequest {
                services: vec![spec.clone(), ServiceSpec::new("db", "sh")],
            })
            .expect("serializes"),
            serde_json::to_vec(&TagRequest {
                key: "role".into(),
                value: "nas".into(),
            })
            .expect("serializes"),
        ]
    })
}

#[test]
fn fuzz_api_request_body() {
    let seeds = api_seeds();
    run(seeds, |bytes| {
        // What the handlers do with a body that deserializes: validate before any write.
        if let Ok(request) = serde_json::from_slice::<ServiceAddRequest>(bytes) {
            let _ = validate_set(&request.services);
        }
        if let Ok(tag) = serde_json::from_slice::<TagRequest>(bytes) {
            let _ = mesh::state::validate_tag(&tag.key, &tag.value);
        }
    });
}

// ---- invite tickets and /mesh/join/1 --------------------------------------------------------

/// Real tickets (with and without a name, one and eight addresses), as text bytes.
fn ticket_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let addrs: Vec<libp2p::Multiaddr> = (0..8)
            .map(|i| {
                format!("/ip4/10.0.0.{i}/udp/7400/quic-v1")
                    .parse()
                    .expect("addr")
            })
            .collect();
        [(1, None), (8, Some("kitchen pi".to_string()))]
            .into_iter()
            .map(|(n, name)| {
                mesh::invite::Ticket {
                    mesh_id: mesh::admission::MeshKey::generate().mesh_id(),
                    inviter: peer(),
                    addrs: addrs[..n].to_vec(),
                    secret: [9; 32],
                    expires: 1_800_000_000,
                    name,
                }
                .encode()
                .into_bytes()
            })
            .collect()
    })
}

#[test]
fn fuzz_invite_ticket() {
    run(ticket_seeds(), |bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        // Whatever decodes re-encodes to a ticket that decodes to the same thing.
        if let Ok(ticket) = mesh::invite::Ticket::decode(text) {
            let again = mesh::invite::Ticket::decode(&ticket.encode()).expect("round trip");
            assert_eq!(again, ticket);
        }
    });
}

fn join_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        [
            JoinRequest {
                secret: vec![7; 32],
                name: "pi".into(),
            },
            JoinRequest {
                secret: vec![1; 31],
                name: "x".repeat(64),
            },
        ]
        .into_iter()
        .map(|r| cbor_request::<JoinRequest, JoinResponse>(MAX_JOIN_MESSAGE, &JOIN_PROTOCOL, r))
        .collect()
    })
}

#[test]
fn fuzz_join_request() {
    run(join_seeds(), |bytes| {
        let mut codec =
            limited_codec::<JoinRequest, JoinResponse>(MAX_JOIN_MESSAGE, MAX_JOIN_MESSAGE);
        let mut io = futures::io::Cursor::new(bytes);
        let Ok(request) = block_on(codec.read_request(&JOIN_PROTOCOL, &mut io)) else {
            return;
        };
        // What an unadmitted peer's request reaches: the store, which refuses any secret it
        // did not make and spends nothing.
        let mut store = mesh::invite::InviteStore::default();
        let (_, secret) = store.create(1_800_000_000, 60, 1, None).expect("an invite");
        if request.secret != secret {
            assert!(store.redeem(&request.secret, 1_800_000_000).is_err());
            assert_eq!(store.list()[0].used, 0);
        }
    });
}
