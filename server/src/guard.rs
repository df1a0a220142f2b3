//! What every request passes before it reaches a route: ComfyUI's guard against other web
//! sites driving a local server (DNS rebinding, cross-site requests), and the optional bearer
//! token.
//!
//! The token may come as `Authorization: Bearer T`, as a cookie the server set, or once as
//! `?token=T` (a browser cannot add headers to a page load or a WebSocket): that answer sets an
//! HttpOnly, SameSite=Strict cookie, which the page's later requests and its `/ws` upgrade
//! carry. The cookie holds a hash of the token, not the token.

use std::net::IpAddr;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::routes::AppState;

const COOKIE: &str = "comfyrs_token";

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(why) = cross_site(req.headers()) {
        tracing::warn!("refused {} {}: {why}", req.method(), req.uri().path());
        return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
    }
    // As ComfyUI: a preflight is answered here (no route has an OPTIONS handler); it carries no
    // data, so it needs no token either.
    if req.method() == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    let Some(token) = s.options.auth_token.as_deref().filter(|t| !t.is_empty()) else {
        return next.run(req).await;
    };
    match presented(req.headers(), req.uri(), token) {
        Presented::Header | Presented::Cookie => next.run(req).await,
        Presented::Query => {
            let mut resp = next.run(req).await;
            let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", cookie_value(token));
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
        Presented::Nothing => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this server requires its access token: send the header `Authorization: Bearer <token>`, or open the page once with `?token=<token>`",
            )
            .into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

enum Presented {
    Header,
    Cookie,
    Query,
    Nothing,
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn cookie_value(token: &str) -> String {
    blake3::derive_key("comfyrs serve session cookie", token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn presented(headers: &HeaderMap, uri: &Uri, token: &str) -> Presented {
    // The scheme's name is case-insensitive (RFC 9110).
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t);
    if bearer.into_iter().any(|t| same(t.trim(), token)) {
        return Presented::Header;
    }
    let expected = cookie_value(token);
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';'));
    if cookies.filter_map(|c| c.trim().split_once('=')).any(|(k, v)| k == COOKIE && same(v, &expected)) {
        return Presented::Cookie;
    }
    if let Ok(Query(q)) = Query::<Vec<(String, String)>>::try_from_uri(uri) {
        if q.iter().any(|(k, v)| k == "token" && same(v, token)) {
            return Presented::Query;
        }
    }
    Presented::Nothing
}

/// A loopback address, or a name that always means this machine (`localhost`, `*.localhost`).
/// ComfyUI also resolves other names through DNS; a request never waits for DNS here.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.is_loopback(),
        Ok(IpAddr::V6(a)) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => h == "localhost" || h.ends_with(".localhost"),
    }
}

/// Host and optional port of an authority (`host:port`, `[v6]:port`), lowercased, brackets kept
/// off the host.
fn split(authority: &str) -> Option<(String, Option<u16>)> {
    let a: axum::http::uri::Authority = authority.parse().ok()?;
    Some((a.host().trim_start_matches('[').trim_end_matches(']').to_lowercase(), a.port_u16()))
}

/// Why the request must be refused as coming from another site, if it must (ComfyUI's rule).
fn cross_site(headers: &HeaderMap) -> Option<String> {
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site") {
        return Some("cross-site requests are refused (Sec-Fetch-Site: cross-site)".into());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?.to_lowercase();
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?.to_lowercase();
    let (host_name, host_port) = split(&host)?;
    if !is_loopback(&host_name) {
        return None;
    }
    let refuse = || Some(format!("the page at {origin} may not use this server (Host: {host}); open the UI from the server's own address"));
    // An origin without a host (`null`, an opaque origin) is not compared, as in ComfyUI.
    if !origin.contains("://") {
        return None;
    }
    let Some(auth) = origin.parse::<Uri>().ok().and_then(|u| u.authority().cloned()) else { return refuse() };
    let Some((origin_name, origin_port)) = split(auth.as_str()) else { return refuse() };
    // A side without a port is compared by host name only (some browsers leave it out).
    let same = if origin_port.is_none() || host_port.is_none() { host_name == origin_name } else { (&host_name, host_port) == (&origin_name, origin_port) };
    if same {
        None
    } else {
        refuse()
    }
}
