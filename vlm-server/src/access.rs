//! Who may use the server. Browsers send any page's requests to loopback, so the page's own
//! origins are an allow-list: a request or socket that a browser marks as coming from another
//! origin is refused, and, bound to loopback, so is a request naming another host (a DNS
//! rebinding page reaches loopback under its own name). With an API key, the API and the
//! socket also need `Authorization: Bearer KEY`, as OpenAI clients send it.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

/// The WebSocket subprotocol prefix that carries the key from a browser, which cannot set
/// headers on a socket: `fastvlm-key.KEY`.
pub const KEY_PROTOCOL_PREFIX: &str = "fastvlm-key.";

/// The allow-lists and the key.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// Origins (`scheme://host[:port]`, lower case) whose pages may use the API and the socket.
    origins: Vec<String>,
    /// `Host` values accepted; `None` accepts any (bound beyond loopback).
    hosts: Option<Vec<String>>,
    key: Option<String>,
}

impl Access {
    /// The server's own loopback URLs at `addr`'s port, the address itself, and `extra` origins;
    /// `Host` checked when `addr` is a loopback address.
    pub fn new(addr: SocketAddr, extra: &[String], key: Option<String>) -> Self {
        let port = addr.port();
        let mut hosts = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
            hosts.push(match addr {
                SocketAddr::V4(a) => format!("{}:{port}", a.ip()),
                SocketAddr::V6(a) => format!("[{}]:{port}", a.ip()),
            });
        }
        let mut origins: Vec<String> = hosts.iter().map(|h| format!("http://{h}")).collect();
        origins.extend(extra.iter().map(|o| normalise_origin(o)));
        let mut allowed_hosts = hosts.clone();
        if port == 80 {
            allowed_hosts.extend(["127.0.0.1", "localhost", "[::1]"].map(String::from));
        }
        allowed_hosts.extend(
            origins
                .iter()
                .filter_map(|o| o.split_once("://").map(|(_, h)| h.to_string())),
        );
        Self {
            origins,
            hosts: addr.ip().is_loopback().then_some(allowed_hosts),
            key: key.filter(|k| !k.is_empty()),
        }
    }

    /// Whether `origin` may use the API and the socket.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.origins.contains(&normalise_origin(origin))
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.hosts
            .as_ref()
            .is_none_or(|hosts| hosts.contains(&host.to_ascii_lowercase()))
    }

    /// Whether the request carries the key (always, without one).
    fn key_given(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.key else {
            return true;
        };
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let protocol = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|p| p.trim().strip_prefix(KEY_PROTOCOL_PREFIX));
        bearer.chain(protocol).any(|t| same(t, key))
    }
}

/// `scheme://host[:port]` in lower case, without a trailing slash.
fn normalise_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Compares without stopping at the first difference, so the time taken does not tell how
/// much of a guessed key was right.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, &x) in b.iter().enumerate() {
        diff |= usize::from(x ^ a.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Routes a browser page or client must be allowed to use: all but the page and `/health`.
fn guarded(path: &str) -> bool {
    !matches!(path, "/" | "/health")
}

/// The middleware: `Host` on every route; `Origin` and the key on the guarded ones.
pub(crate) async fn check(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let access = &app.access;
    let headers = request.headers();
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !access.host_allowed(host) {
            return ApiError::forbidden(format!("this server does not answer for host `{host}`"))
                .into_response();
        }
    }
    if guarded(request.uri().path()) {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !access.origin_allowed(origin) {
                return ApiError::forbidden(format!(
                    "requests from origin `{origin}` are refused (--allowed-origin adds one)"
                ))
                .into_response();
            }
        }
        if !access.key_given(headers) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn loopback_allows_its_own_origins_and_hosts() {
        let a = Access::new(
            "127.0.0.1:8000".parse().unwrap(),
            &["https://Example.org/".into()],
            None,
        );
        for ok in [
            "http://127.0.0.1:8000",
            "http://localhost:8000/",
            "http://[::1]:8000",
            "https://example.org",
        ] {
            assert!(a.origin_allowed(ok), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:8001",
            "http://evil.example:8000",
            "null",
            "http://localhost:8000.evil.example",
        ] {
            assert!(!a.origin_allowed(bad), "{bad}");
        }
        assert!(a.host_allowed("LOCALHOST:8000"));
        assert!(a.host_allowed("example.org"));
        assert!(!a.host_allowed("evil.example:8000"));
        assert!(!a.host_allowed("localhost"));

        // Bound beyond loopback, any Host (a proxy's name), the origin list still applies.
        let any = Access::new("0.0.0.0:8000".parse().unwrap(), &[], None);
        assert!(any.host_allowed("gpu-box.lan:8000"));
        assert!(!any.origin_allowed("http://gpu-box.lan:8000"));
    }

    #[test]
    fn the_key_comes_as_a_bearer_token_or_a_socket_protocol() {
        let a = Access::new("127.0.0.1:1".parse().unwrap(), &[], Some("s3cret".into()));
        assert!(a.key_given(&headers(&[("authorization", "Bearer s3cret")])));
        assert!(a.key_given(&headers(&[("authorization", "bearer  s3cret ")])));
        assert!(a.key_given(&headers(&[(
            "sec-websocket-protocol",
            "fastvlm, fastvlm-key.s3cret"
        )])));
        for bad in [
            vec![],
            vec![("authorization", "Bearer s3cre")],
            vec![("authorization", "Bearer s3cret2")],
            vec![("authorization", "Basic s3cret")],
            vec![("sec-websocket-protocol", "s3cret")],
        ] {
            assert!(!a.key_given(&headers(&bad)), "{bad:?}");
        }
        let open = Access::new("127.0.0.1:1".parse().unwrap(), &[], Some(String::new()));
        assert!(open.key_given(&HeaderMap::new()), "an empty key is no key");
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("ab", "abc"));
        assert!(!same("abcd", "abc"));
        assert!(same("", ""));
    }
}
