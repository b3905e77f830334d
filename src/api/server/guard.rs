//! The checks every request passes before a handler sees it, and the JSON shape of every
//! refusal.
//!
//! In order: the `Host` header must name this API (loopback names or the bound address:
//! against DNS rebinding, where a web page's own host name resolves to 127.0.0.1). Then, for
//! state changes (every method but GET and HEAD): no foreign `Origin` (a web page's form or
//! fetch), `Content-Type: application/json` (which a page cannot send cross-origin without a
//! CORS preflight, and this API answers none), and the API token as `Authorization: Bearer`.
//! Last, long polls take a slot from a bounded pool. Every refusal is an [`ApiError`], and
//! [`json_errors`] turns any other error answer (axum's plain-text rejections of a bad query
//! string or body, the empty 405) into one, its code taken from the status.
//!
//! Owns the decisions ([`Guard::check`] is plain data in, refusal out) and their middleware.
//! Does not own the token file ([`crate::api::auth`]) nor connection limits (`listener`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, ORIGIN};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::api::auth::{ADMIN_GROUP, SESSION_TTL_S, TOKEN_FILE, TOKEN_FILE_ENV, TokenVerifier};
use crate::api::contract::{ApiError, ErrorCode, routes};

/// Largest non-JSON error body [`json_errors`] reads to wrap: axum's rejection texts are one
/// line; anything longer is cut.
const MAX_WRAPPED_ERROR_BYTES: usize = 4 * 1024;

/// What the checks need: the API's own address, the token verifier, where the token lives
/// (for the messages), and the long-poll slots.
#[derive(Debug)]
pub struct Guard {
    own: SocketAddr,
    verifier: TokenVerifier,
    token_file: Option<PathBuf>,
    long_polls: Arc<Semaphore>,
    max_long_polls: usize,
}

impl Guard {
    pub fn new(
        own: SocketAddr,
        verifier: TokenVerifier,
        token_file: Option<PathBuf>,
        max_long_polls: usize,
    ) -> Self {
        Self {
            own,
            verifier,
            token_file,
            long_polls: Arc::new(Semaphore::new(max_long_polls)),
            max_long_polls,
        }
    }

    fn token_file(&self) -> String {
        self.token_file.as_ref().map_or_else(
            || format!("DATA_DIR/{TOKEN_FILE}"),
            |p| p.display().to_string(),
        )
    }

    /// The name of this API's session cookie: with the port, so that two agents on one host
    /// (cookies do not tell ports apart) do not overwrite each other's login.
    pub fn cookie_name(&self) -> String {
        format!("mesh_session_{}", self.own.port())
    }

    /// The session cookie of a request, if it has one.
    pub fn session_of<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let name = self.cookie_name();
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Whether the request carries a valid session.
    pub fn logged_in(&self, headers: &HeaderMap) -> bool {
        self.session_of(headers)
            .is_some_and(|s| self.verifier.verify_session(s, unix_now_s()))
    }

    /// `Set-Cookie` of a login with `token`, or `None` when it is not the token.
    pub fn login(&self, token: &str) -> Option<String> {
        if !self.verifier.verify(token) {
            return None;
        }
        let session = self.verifier.session(unix_now_s() + SESSION_TTL_S);
        Some(format!(
            "{}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL_S}",
            self.cookie_name()
        ))
    }

    /// `Set-Cookie` that makes the browser forget its session.
    pub fn logout(&self) -> String {
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
            self.cookie_name()
        )
    }

    /// The checks of the module doc, on the method and headers of a request to any path but
    /// the session's.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        self.check_path(method, "", headers)
    }

    /// The checks of the module doc, on the method, path and headers of one request.
    pub fn check_path(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let forbidden = |message: String| ApiError::new(ErrorCode::Forbidden, message);
        let port = self.own.port();
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        match host {
            Some(host) if host_allowed(host, self.own) => {}
            Some(host) => {
                return Err(forbidden(format!(
                    "refused: Host `{host}` is not this API's address; use \
                     http://127.0.0.1:{port} or http://localhost:{port} (other host names are \
                     refused so that web pages cannot reach the API through DNS rebinding)"
                )));
            }
            None => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "a Host header is required (http://127.0.0.1:{port} or \
                         http://localhost:{port})"
                    ),
                ));
            }
        }
        if *method == Method::GET || *method == Method::HEAD {
            return Ok(());
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let origin = origin.to_str().unwrap_or("?");
            if !origin_allowed(origin, self.own) {
                return Err(forbidden(format!(
                    "refused: state changes from web pages of another origin (`{origin}`) are \
                     not accepted; only http://localhost:{port} and http://127.0.0.1:{port} may \
                     send them"
                )));
            }
        }
        let content_type = headers
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("?"))
            .unwrap_or("");
        if !is_json(content_type) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "state changes must be sent with `Content-Type: application/json` (this \
                     one had `{content_type}`), even without a body"
                ),
            ));
        }
        if path == routes::SESSION {
            // Logging in or out: the handler checks the token in the body.
            return Ok(());
        }
        let file = self.token_file();
        let how = format!(
            "run the command as root or as a member of the `{ADMIN_GROUP}` group, who can \
             read the agent's token file {file} (the CLI finds it there; or pass \
             --token-file / {TOKEN_FILE_ENV}). Reads (GET) need no token."
        );
        let Some(auth) = headers.get(AUTHORIZATION) else {
            if let Some(session) = self.session_of(headers) {
                // A browser. Its own page sends an `Origin` with every change (checked above);
                // without one, the cookie is not taken as a credential.
                if headers.get(ORIGIN).is_none() {
                    return Err(forbidden(
                        "a dashboard session is accepted only from the dashboard's own page \
                         (the request had no Origin header)"
                            .to_string(),
                    ));
                }
                if self.verifier.verify_session(session, unix_now_s()) {
                    return Ok(());
                }
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    format!(
                        "the dashboard session has expired or the API token changed: log in \
                         again with the token ({file})"
                    ),
                ));
            }
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                format!("changing the agent needs its API token: {how}"),
            ));
        };
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token);
        match token {
            Some(token) if self.verifier.verify(token) => Ok(()),
            _ => Err(forbidden(format!(
                "the API token does not match the agent's ({file}; a new one is made only \
                 when that file is deleted and the agent restarted): {how}"
            ))),
        }
    }
}

/// Seconds since the Unix epoch, for session expiry.
fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `Host` names this API: `localhost`, `127.0.0.1`, `[::1]` or the bound IP, with no
/// port or the API's port.
pub fn host_allowed(host: &str, own: SocketAddr) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inside, after)) => (&host[..inside.len() + 2], after.strip_prefix(':')),
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    if let Some(port) = port
        && port.parse::<u16>().ok() != Some(own.port())
    {
        return false;
    }
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let ip: Option<IpAddr> = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .map_or_else(|| name.parse().ok(), |inner| inner.parse().ok());
    // An IPv6 literal must be bracketed, an IPv4 one must not.
    let bracketed = name.starts_with('[');
    match ip {
        Some(ip @ IpAddr::V6(_)) if bracketed => {
            ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                || (ip == own.ip() && !ip.is_unspecified())
        }
        Some(ip @ IpAddr::V4(_)) if !bracketed => {
            ip == IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
                || (ip == own.ip() && !ip.is_unspecified())
        }
        _ => false,
    }
}

/// Whether `Origin` is this API itself (a page it would serve): `http://` and an allowed host
/// with the API's port (none written means 80).
pub fn origin_allowed(origin: &str, own: SocketAddr) -> bool {
    let Some(rest) = origin
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .map(|_| &origin[7..])
    else {
        return false;
    };
    if rest.contains('/') {
        return false;
    }
    let has_port = match rest.strip_prefix('[') {
        Some(r) => r
            .split_once(']')
            .is_some_and(|(_, after)| !after.is_empty()),
        None => rest.contains(':'),
    };
    if has_port {
        host_allowed(rest, own)
    } else {
        own.port() == 80 && host_allowed(rest, own)
    }
}

/// Whether a `Content-Type` value is JSON (`application/json`, parameters allowed).
pub fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether a request is a long poll: `/v1/peers?wait=…` or `/v1/events?wait_ms=N` (N > 0).
pub fn is_long_poll(uri: &Uri) -> bool {
    let Some(query) = uri.query() else {
        return false;
    };
    let param = |key: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    };
    match uri.path() {
        routes::PEERS => param("wait").is_some(),
        routes::EVENTS => param("wait_ms").is_some_and(|v| v != "0"),
        _ => false,
    }
}

/// Middleware: [`Guard::check`], then a long-poll slot for long polls.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    if let Err(refusal) =
        guard.check_path(request.method(), request.uri().path(), request.headers())
    {
        return refusal.into_response();
    }
    let _slot = if is_long_poll(request.uri()) {
        match guard.long_polls.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                // `Retry-After` comes with the code.
                return ApiError::new(
                    ErrorCode::TooManyLongPolls,
                    format!(
                        "too many waiting requests ({} long polls at once); retry in a second",
                        guard.max_long_polls
                    ),
                )
                .into_response();
            }
        }
    } else {
        None
    };
    next.run(request).await
}

/// Middleware: every error answer as an [`ApiError`]. Bodies that are not JSON (axum's
/// plain-text rejections, the empty 405) become the message, or the status's own words; the
/// code is the status's ([`ErrorCode::for_status`]); headers (`Allow`) are kept.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let is_json_body = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json);
    if !(status.is_client_error() || status.is_server_error()) || is_json_body {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_WRAPPED_ERROR_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if !text.is_empty() {
        text
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        // The `Allow` header, which names the methods, is added outside this layer.
        format!(
            "method {method} is not allowed on {path}; see the route table in \
             protocol/control-api.md"
        )
    } else {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    };
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(CONTENT_LENGTH);
    let code = ErrorCode::for_status(status.as_u16());
    // One status per code: a 422 (a body that decodes to the wrong shape) answers 400.
    if code != ErrorCode::Internal
        && let Ok(status) = StatusCode::from_u16(code.status())
    {
        parts.status = status;
    }
    let json = ApiError::new(code, message).into_response();
    let (json_parts, json_body) = json.into_parts();
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, json_body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn own() -> SocketAddr {
        "127.0.0.1:7401".parse().unwrap()
    }

    #[test]
    fn hosts_are_this_api_or_loopback_names() {
        for ok in [
            "localhost",
            "localhost:7401",
            "LOCALHOST:7401",
            "127.0.0.1",
            "127.0.0.1:7401",
            "[::1]",
            "[::1]:7401",
        ] {
            assert!(host_allowed(ok, own()), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7401",
            "localhost:80",
            "127.0.0.1:7402",
            "127.0.0.2",
            "localhost.evil.example",
            "::1",
            "[127.0.0.1]",
            "[::1",
            "",
            "0.0.0.0:7401",
        ] {
            assert!(!host_allowed(bad, own()), "{bad}");
        }
        let lan: SocketAddr = "10.0.0.2:7401".parse().unwrap();
        assert!(host_allowed("10.0.0.2:7401", lan), "the bound address");
        let any: SocketAddr = "0.0.0.0:7401".parse().unwrap();
        assert!(!host_allowed("0.0.0.0:7401", any), "never the wildcard");
    }

    #[test]
    fn origins_are_this_api_only() {
        assert!(origin_allowed("http://localhost:7401", own()));
        assert!(origin_allowed("http://127.0.0.1:7401", own()));
        assert!(origin_allowed("http://[::1]:7401", own()));
        for bad in [
            "http://evil.example",
            "http://evil.example:7401",
            "https://localhost:7401",
            "http://localhost",
            "http://localhost:7401/x",
            "null",
            "",
        ] {
            assert!(!origin_allowed(bad, own()), "{bad}");
        }
    }

    #[test]
    fn content_types_must_be_json() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }

    #[test]
    fn long_polls_are_recognized() {
        let poll = |s: &str| is_long_poll(&s.parse::<Uri>().unwrap());
        assert!(poll("/v1/peers?wait=3&timeout_ms=1000"));
        assert!(poll("/v1/events?after=2&wait_ms=25000"));
        assert!(!poll("/v1/events?wait_ms=0"));
        assert!(!poll("/v1/peers"));
        assert!(!poll("/v1/status?wait=1"));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn state_changes_need_json_same_origin_and_the_token() {
        let token = crate::api::auth::generate_token();
        let guard = Guard::new(own(), TokenVerifier::new(&token), None, 4);
        let bearer = format!("Bearer {token}");
        let status = |method: Method, pairs: &[(&'static str, &str)]| {
            guard
                .check(&method, &headers(pairs))
                .err()
                .map(|r| r.status())
        };
        let host = ("host", "127.0.0.1:7401");
        let json = ("content-type", "application/json");
        // Reads: only the Host matters.
        assert_eq!(status(Method::GET, &[host]), None);
        assert_eq!(
            status(Method::GET, &[("host", "evil.example:7401")]),
            Some(403)
        );
        assert_eq!(status(Method::GET, &[]), Some(400));
        // The cross-origin form POST of a web page.
        assert_eq!(
            status(
                Method::POST,
                &[
                    host,
                    ("origin", "http://evil.example"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ]
            ),
            Some(403)
        );
        assert_eq!(
            status(Method::POST, &[host, ("authorization", &bearer)]),
            Some(415)
        );
        assert_eq!(status(Method::DELETE, &[host, json]), Some(401));
        assert_eq!(
            status(
                Method::POST,
                &[host, json, ("authorization", "Bearer nope")]
            ),
            Some(403)
        );
        assert_eq!(
            status(Method::POST, &[host, json, ("authorization", &token)]),
            Some(403),
            "the scheme is required"
        );
        assert_eq!(
            status(Method::POST, &[host, json, ("authorization", &bearer)]),
            None
        );
        assert_eq!(
            status(
                Method::PUT,
                &[
                    host,
                    json,
                    ("origin", "http://localhost:7401"),
                    ("authorization", &bearer)
                ]
            ),
            None,
            "same origin is fine"
        );
        // A browser's session: only from this API's own page.
        let cookie = guard.login(&token).unwrap();
        let session = cookie.split(';').next().unwrap().to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(guard.login("nope").is_none());
        let origin = ("origin", "http://127.0.0.1:7401");
        assert_eq!(
            status(Method::POST, &[host, json, origin, ("cookie", &session)]),
            None
        );
        assert_eq!(
            status(Method::POST, &[host, json, ("cookie", &session)]),
            Some(403),
            "no Origin"
        );
        assert_eq!(
            status(
                Method::POST,
                &[
                    host,
                    json,
                    ("origin", "http://evil.example"),
                    ("cookie", &session)
                ]
            ),
            Some(403)
        );
        assert_eq!(
            status(
                Method::POST,
                &[host, json, origin, ("cookie", "mesh_session_7401=1.00")]
            ),
            Some(401)
        );
        assert!(guard.logged_in(&headers(&[("cookie", &format!("a=b; {session}"))])));
        assert!(!guard.logged_in(&headers(&[("cookie", "mesh_session_7402=x")])));
        // Logging in needs no token header (the body has it), but the other checks hold.
        assert_eq!(
            guard
                .check_path(&Method::POST, routes::SESSION, &headers(&[host, json]))
                .err()
                .map(|e| e.status()),
            None
        );
        assert_eq!(
            guard
                .check_path(
                    &Method::POST,
                    routes::SESSION,
                    &headers(&[host, json, ("origin", "http://evil.example")])
                )
                .err()
                .map(|e| e.status()),
            Some(403)
        );
        let unauthorized = guard
            .check(&Method::POST, &headers(&[host, json]))
            .unwrap_err();
        assert_eq!(unauthorized.code, ErrorCode::Unauthorized);
        assert!(unauthorized.message.contains("`mesh` group"));
        assert!(unauthorized.message.contains("api.token"));
    }
}
