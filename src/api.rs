//! The local control API: one typed contract ([`contract`]) shared by the server (in the
//! agent) and the client (the CLI). HTTP/1.1 + JSON on loopback, versioned under `/v1`. Spec:
//! `protocol/control-api.md`.
//!
//! # Route table
//!
//! Paths are the constants of [`contract::routes`]; the client has one method per route.
//!
//! | method | path | constant | response | client |
//! |---|---|---|---|---|
//! | GET | `/v1/status` | `STATUS` | [`StatusResponse`] | `status` |
//! | GET | `/metrics` | `METRICS` | this node's metrics, Prometheus/OpenMetrics text (`server::metrics`); also alone on `--metrics-listen` | - |
//! | GET | `/v1/peers` | `PEERS` | array of [`PeerEntry`], self first; header `x-mesh-version` | `peers` |
//! | GET | `/v1/peers?wait=V&timeout_ms=T` | `PEERS` | long poll: answers when the snapshot version differs from `V`, or after `T` ms (max 30000) | `peers_poll` |
//! | GET | `/v1/state` | `STATE` | [`StateResponse`] | `state` |
//! | POST | `/v1/tags` | `TAGS` | body [`TagRequest`]; sets one of this node's tags; [`TagResponse`] | `set_tag` |
//! | DELETE | `/v1/tags/{key}` | `TAG` | removes one of this node's tags; [`TagResponse`] | `remove_tag` |
//! | GET | `/v1/services` | `SERVICES` | array of [`ServiceEntry`], mesh-wide, by name | `services` |
//! | POST | `/v1/services` | `SERVICES` | body [`ServiceAddRequest`]; [`ServiceAddResponse`] | `add_services` |
//! | DELETE | `/v1/services/{name}` | `SERVICE` | removes a service (stops it); [`ServiceActionResponse`] | `remove_service` |
//! | POST | `/v1/services/{name}/{action}` | `SERVICE_ACTION` | `start`, `stop`, `restart`, `rebalance`; [`ServiceActionResponse`] | `service_action` |
//! | GET | `/v1/services/{name}/endpoints` | `SERVICE_ENDPOINTS` | array of [`EndpointEntry`]: the healthy copies, `host:port` | `endpoints` |
//! | POST | `/v1/nodes/{node}/{action}` | `NODE_ACTION` | `drain`, `undrain`, asked of that node; [`DrainResponse`] | `drain` |
//! | GET | `/v1/services/{name}/logs?n=N&offset=O` | `SERVICE_LOGS` | [`LogsResponse`], from the node running it | `logs` |
//! | GET | `/v1/ports?node=NAME` | `PORTS` | array of [`PortEntry`] (leases, mesh-wide or one node) | `ports` |
//! | GET | `/v1/ports/listening?node=NAME` | `PORTS_LISTENING` | [`ListeningResponse`], asked of that node | `listening` |
//! | GET | `/v1/events?node=NAME&after=SEQ&limit=N&wait_ms=T` | `EVENTS` | [`EventsResponse`] | `events` |
//! | POST | `/v1/invites` | `INVITES` | body [`InviteCreateRequest`]; a new invite and its ticket, [`InviteCreated`] | `create_invite` |
//! | GET | `/v1/invites` | `INVITES` | array of [`InviteEntry`] (never secrets) | `invites` |
//! | DELETE | `/v1/invites/{id}` | `INVITE` | revokes an invite; [`InviteEntry`] | `revoke_invite` |
//! | GET | `/`, `/ui/{file}` | `DASHBOARD`, `DASHBOARD_ASSET` | the web dashboard and its assets (`server::dashboard`) | - |
//! | GET | `/v1/stream` | `STREAM` | server-sent events: `overview` ([`Overview`]) on changes, `sample` each sampler interval | - |
//! | GET | `/v1/history` | `HISTORY` | [`HistoryResponse`]: the charts' samples of the last hour | - |
//! | GET, POST, DELETE | `/v1/session` | `SESSION` | body [`SessionRequest`]; [`SessionResponse`] and the browser's session cookie | - |
//! | POST | `/v1/join` | `JOIN` | body [`JoinApiRequest`]; redeems a ticket, stores the key, restarts the agent with it; [`JoinApiResponse`] | `join` |
//!
//! Every error answer, whatever refused the request, is an [`ApiError`]:
//! `{"code": "...", "message": "..."}` with the status of its [`ErrorCode`].
//!
//! Reads (GET) are open to local users; every other method needs the API token
//! ([`auth`]) or a browser's session cookie standing for it, `Content-Type: application/json`, no foreign `Origin`, and every request a
//! `Host` naming the API (`server::guard`).
//!
//! Owns the module tree; the types are in [`contract`] (re-exported here), the HTTP server in
//! [`server`] (which also converts the node's snapshots), the client in [`client`].

pub mod auth;
pub mod client;
pub mod contract;
pub mod server;

pub use contract::*;
