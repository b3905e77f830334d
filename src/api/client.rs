//! The API's HTTP client, used by the CLI. Blocking (ureq): a CLI call is one request, and
//! `--watch` is a loop of long polls.
//!
//! One typed method per route of the contract ([`crate::api::contract`]), built on a generic
//! layer ([`ApiClient::get`], [`ApiClient::send_json`], [`ApiClient::request`]) that the raw
//! `mesh api` and tests use too. Every state change (any method but GET) carries
//! `Content-Type: application/json` (with or without a body) and, when the CLI found one, the
//! API token as `Authorization: Bearer`. Error answers decode to [`ClientError::Api`] with the
//! server's [`ErrorCode`].

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::auth::ClientToken;
use super::contract::{
    ApiError, DrainResponse, EndpointEntry, ErrorCode, EventsQuery, EventsResponse,
    InviteCreateRequest, InviteCreated, InviteEntry, JoinApiRequest, JoinApiResponse,
    KeyRotateResponse, ListeningResponse, LogsQuery, LogsResponse, NodeQuery, PeerEntry,
    PeersQuery, PortEntry, RemoveResponse, ServiceAction, ServiceActionResponse, ServiceAddRequest,
    ServiceAddResponse, ServiceEntry, StateResponse, StatusResponse, TagRequest, TagResponse,
    VERSION_HEADER, routes,
};

/// Pause before a long poll refused for want of slots is asked again: the agent's
/// `Retry-After`.
pub const LONG_POLL_BUSY_PAUSE: Duration = Duration::from_secs(1);

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no mesh agent is answering at {url}; start one with `mesh agent`, or point --api / \
         MESH_API at a running one"
    )]
    NoAgent { url: String },
    #[error("{0}")]
    Usage(String),
    /// Standard output was closed (`mesh ... | head`): the command ends quietly.
    #[error("standard output is closed")]
    OutputClosed,
    /// An error answer: its status, the server's code (from the status for agents that
    /// predate codes) and message.
    #[error("the agent answered {status}: {message}")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("talking to the agent at {url}: {message}")]
    Other { url: String, message: String },
}

/// A client of one agent's API.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
    token: ClientToken,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.token.token.as_ref().map(|_| ".."))
            .finish()
    }
}

/// A response body plus the snapshot version header, if present.
pub struct Versioned<T> {
    pub body: T,
    pub version: Option<u64>,
}

impl ApiClient {
    /// `api` is `HOST:PORT` or `http://HOST:PORT`.
    pub fn new(api: &str) -> Self {
        let base = if api.starts_with("http://") || api.starts_with("https://") {
            api.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", api.trim_end_matches('/'))
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Long polls last up to 30 s; anything longer means the agent is stuck.
            .timeout_global(Some(Duration::from_secs(40)))
            .build()
            .into();
        Self {
            base,
            agent,
            token: ClientToken::default(),
        }
    }

    /// This client with the API token for state changes (or the note why there is none,
    /// added to a refusal).
    pub fn with_token(mut self, token: ClientToken) -> Self {
        self.token = token;
        self
    }

    /// The URL of `path`; a path without its leading `/` (`v1/status`) gets one.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/{path}", self.base)
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET `path` (e.g. `/v1/peers`) and decode the JSON body.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Versioned<T>, ClientError> {
        let (status, version, text) = self.request("GET", path, None)?;
        if !(200..300).contains(&status) {
            return Err(self.api_error(status, &text));
        }
        let body = serde_json::from_str(&text).map_err(|e| ClientError::Other {
            url: self.base.clone(),
            message: format!("unexpected response: {e}"),
        })?;
        Ok(Versioned { body, version })
    }

    /// [`Self::get`] for a long poll: while the agent's long-poll slots are all taken
    /// ([`ErrorCode::TooManyLongPolls`]), waits [`LONG_POLL_BUSY_PAUSE`] and asks again, as a
    /// follower should (Ctrl-C ends it).
    pub fn get_waiting<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Versioned<T>, ClientError> {
        loop {
            match self.get(path) {
                Err(ClientError::Api {
                    code: ErrorCode::TooManyLongPolls,
                    ..
                }) => {
                    std::thread::sleep(LONG_POLL_BUSY_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// A request with an optional JSON body, decoding a JSON answer.
    pub fn send_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<T, ClientError> {
        let (status, _, text) = self.request(method, path, body)?;
        if !(200..300).contains(&status) {
            return Err(self.api_error(status, &text));
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Other {
            url: self.base.clone(),
            message: format!("unexpected response: {e}"),
        })
    }

    /// POST `body` as JSON to `path` and decode the JSON answer.
    pub fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let text = serde_json::to_string(body).map_err(|e| ClientError::Other {
            url: self.base.clone(),
            message: format!("encoding the request: {e}"),
        })?;
        self.send_json("POST", path, Some(&text))
    }

    /// A raw request: status, version header and body text (for `mesh api`).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Option<u64>, String), ClientError> {
        let url = self.url(path);
        let bearer = self.token.token.as_ref().map(|t| format!("Bearer {t}"));
        // State changes: JSON, even without a body (the agent refuses anything else), and the
        // token when there is one.
        macro_rules! change {
            ($builder:expr) => {{
                let builder = $builder.header("Content-Type", "application/json");
                match &bearer {
                    Some(b) => builder.header("Authorization", b),
                    None => builder,
                }
            }};
        }
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => change!(self.agent.delete(&url)).call(),
            ("POST", b) => change!(self.agent.post(&url)).send(b.unwrap_or("")),
            ("PUT", b) => change!(self.agent.put(&url)).send(b.unwrap_or("")),
            _ => {
                return Err(ClientError::Other {
                    url,
                    message: format!("unsupported method {method}; use GET, POST, PUT or DELETE"),
                });
            }
        };
        let mut resp = result.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let version = resp
            .headers()
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        Ok((status, version, text))
    }

    fn transport_error(&self, e: ureq::Error) -> ClientError {
        let refused = match &e {
            ureq::Error::Io(io) => matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
            ),
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
            _ => false,
        };
        if refused {
            ClientError::NoAgent {
                url: self.base.clone(),
            }
        } else {
            ClientError::Other {
                url: self.base.clone(),
                message: e.to_string(),
            }
        }
    }
}

impl ApiClient {
    /// The error of a non-2xx answer; a refused credential also says why this client had none.
    fn api_error(&self, status: u16, text: &str) -> ClientError {
        let ApiError { code, mut message } = decode_error(status, text);
        if let (401 | 403, Some(note)) = (status, &self.token.note) {
            message.push_str(&format!(" (here: {note})"));
        }
        ClientError::Api {
            status,
            code,
            message,
        }
    }
}

/// The body of an error answer as an [`ApiError`]: this version's shape, else the
/// `{"error": "..."}` of agents that predate codes, else the text itself (cut to 200
/// characters), the code then taken from the status.
pub fn decode_error(status: u16, text: &str) -> ApiError {
    /// The error body of agents older than [`ApiError`].
    #[derive(serde::Deserialize)]
    struct LegacyError {
        error: String,
    }
    if let Ok(error) = serde_json::from_str::<ApiError>(text) {
        return error;
    }
    let message = serde_json::from_str::<LegacyError>(text)
        .map(|b| b.error)
        .unwrap_or_else(|_| text.chars().take(200).collect());
    let code = if status == 503 && message.starts_with("too many waiting requests") {
        ErrorCode::TooManyLongPolls
    } else {
        ErrorCode::for_status(status)
    };
    ApiError { code, message }
}

/// One method per route (see the route table in [`crate::api`]).
impl ApiClient {
    /// `GET /v1/status`.
    pub fn status(&self) -> Result<StatusResponse, ClientError> {
        Ok(self.get(routes::STATUS)?.body)
    }

    /// `GET /v1/peers`, with the snapshot version to long-poll on.
    pub fn peers(&self) -> Result<Versioned<Vec<PeerEntry>>, ClientError> {
        self.get(routes::PEERS)
    }

    /// `GET /v1/peers?wait=V&timeout_ms=T`: a long poll, asked again while the agent's
    /// long-poll slots are all taken.
    pub fn peers_poll(&self, query: &PeersQuery) -> Result<Versioned<Vec<PeerEntry>>, ClientError> {
        self.get_waiting(&query.to_path())
    }

    /// `GET /v1/state`.
    pub fn state(&self) -> Result<StateResponse, ClientError> {
        Ok(self.get(routes::STATE)?.body)
    }

    /// `POST /v1/tags`: sets one of this node's tags.
    pub fn set_tag(&self, request: &TagRequest) -> Result<TagResponse, ClientError> {
        self.post_json(routes::TAGS, request)
    }

    /// `DELETE /v1/tags/{key}`: removes one of this node's tags.
    pub fn remove_tag(&self, key: &str) -> Result<TagResponse, ClientError> {
        self.send_json("DELETE", &routes::path(routes::TAG, &[("key", key)]), None)
    }

    /// `POST /v1/invites`: a new invite and its ticket.
    pub fn create_invite(
        &self,
        request: &InviteCreateRequest,
    ) -> Result<InviteCreated, ClientError> {
        self.post_json(routes::INVITES, request)
    }

    /// `GET /v1/invites`.
    pub fn invites(&self) -> Result<Vec<InviteEntry>, ClientError> {
        Ok(self.get(routes::INVITES)?.body)
    }

    /// `DELETE /v1/invites/{id}`.
    pub fn revoke_invite(&self, id: &str) -> Result<InviteEntry, ClientError> {
        self.send_json("DELETE", &routes::path(routes::INVITE, &[("id", id)]), None)
    }

    /// `POST /v1/join`: the agent redeems the ticket, stores the key and restarts.
    pub fn join(&self, request: &JoinApiRequest) -> Result<JoinApiResponse, ClientError> {
        self.post_json(routes::JOIN, request)
    }

    /// `GET /v1/services`.
    pub fn services(&self) -> Result<Vec<ServiceEntry>, ClientError> {
        Ok(self.get(routes::SERVICES)?.body)
    }

    /// `POST /v1/services`.
    pub fn add_services(
        &self,
        request: &ServiceAddRequest,
    ) -> Result<ServiceAddResponse, ClientError> {
        self.post_json(routes::SERVICES, request)
    }

    /// `DELETE /v1/services/{name}`.
    pub fn remove_service(&self, name: &str) -> Result<ServiceActionResponse, ClientError> {
        self.send_json(
            "DELETE",
            &routes::path(routes::SERVICE, &[("name", name)]),
            None,
        )
    }

    /// `POST /v1/services/{name}/{start|stop|restart}`.
    pub fn service_action(
        &self,
        name: &str,
        action: ServiceAction,
    ) -> Result<ServiceActionResponse, ClientError> {
        let path = routes::path(
            routes::SERVICE_ACTION,
            &[("name", name), ("action", action.as_str())],
        );
        self.send_json("POST", &path, None)
    }

    /// `GET /v1/services/{name}/endpoints`.
    pub fn endpoints(&self, name: &str) -> Result<Vec<EndpointEntry>, ClientError> {
        let path = routes::path(routes::SERVICE_ENDPOINTS, &[("name", name)]);
        Ok(self.get(&path)?.body)
    }

    /// `POST /v1/nodes/{node}/{drain|undrain}`.
    pub fn drain(&self, node: &str, drained: bool) -> Result<DrainResponse, ClientError> {
        let action = if drained { "drain" } else { "undrain" };
        let path = routes::path(routes::NODE_ACTION, &[("node", node), ("action", action)]);
        self.send_json("POST", &path, None)
    }

    /// `POST /v1/key/rotate`.
    pub fn rotate_key(&self) -> Result<KeyRotateResponse, ClientError> {
        self.send_json("POST", routes::KEY_ROTATE, None)
    }

    /// `POST /v1/nodes/{node}/remove`.
    pub fn remove_node(&self, node: &str) -> Result<RemoveResponse, ClientError> {
        let path = routes::path(routes::NODE_ACTION, &[("node", node), ("action", "remove")]);
        self.send_json("POST", &path, None)
    }

    /// `GET /v1/services/{name}/logs?n=N&offset=O`.
    pub fn logs(&self, service: &str, query: &LogsQuery) -> Result<LogsResponse, ClientError> {
        Ok(self.get(&query.to_path(service))?.body)
    }

    /// `GET /v1/ports?node=NAME`.
    pub fn ports(&self, query: &NodeQuery) -> Result<Vec<PortEntry>, ClientError> {
        Ok(self.get(&query.to_path(routes::PORTS))?.body)
    }

    /// `GET /v1/ports/listening?node=NAME`.
    pub fn listening(&self, query: &NodeQuery) -> Result<ListeningResponse, ClientError> {
        Ok(self.get(&query.to_path(routes::PORTS_LISTENING))?.body)
    }

    /// `GET /v1/events?...`; with `wait_ms` a long poll, asked again while the agent's
    /// long-poll slots are all taken.
    pub fn events(&self, query: &EventsQuery) -> Result<EventsResponse, ClientError> {
        let path = query.to_path();
        let answer = if query.wait_ms.is_some_and(|w| w > 0) {
            self.get_waiting(&path)?
        } else {
            self.get(&path)?
        };
        Ok(answer.body)
    }
}
