//! The dashboard's login sessions: a random token per login, kept in this
//! process's memory with its expiry and handed to the browser as a cookie
//! (`HttpOnly; SameSite=Strict; Path=/ui`), so the API key is typed once
//! into the login form and never travels in a URL or sits in a page.
//! Sessions end at logout, at expiry, or when the gateway restarts.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};

/// The cookie's name.
pub const COOKIE: &str = "nrvna_ui";

/// How long a login lasts.
pub const TTL: Duration = Duration::from_secs(12 * 3600);

/// The most sessions kept; past it the oldest is dropped.
const MAX_SESSIONS: usize = 1000;

#[derive(Default)]
pub struct Sessions {
    /// token -> expiry
    live: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// A new session's token (32 random bytes from the kernel, hex).
    pub fn create(&self) -> std::io::Result<String> {
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        let token: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, exp| *exp > now);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(t, _)| t.clone()) {
                live.remove(&oldest);
            }
        }
        live.insert(token.clone(), now + TTL);
        Ok(token)
    }

    /// Whether the request carries a live session's cookie.
    pub fn valid(&self, headers: &HeaderMap) -> bool {
        let Some(t) = token(headers) else { return false };
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(t).is_some_and(|exp| *exp > Instant::now())
    }

    /// Ends the request's session, if any.
    pub fn end(&self, headers: &HeaderMap) {
        if let Some(t) = token(headers) {
            self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(t);
        }
    }
}

/// The session token of the request's `Cookie` headers.
fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for a new session. Not `Secure`: the gateway speaks plain
/// HTTP (on localhost, or behind a TLS proxy that may add it), and a
/// browser drops a Secure cookie set over http.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}",
        TTL.as_secs()
    )
}

/// `Set-Cookie` that removes the session's cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_valid_until_it_ends() {
        let s = Sessions::default();
        let t = s.create().unwrap();
        assert_eq!(t.len(), 64);
        let mut h = HeaderMap::new();
        assert!(!s.valid(&h));
        h.insert(header::COOKIE, format!("a=b; {COOKIE}={t}").parse().unwrap());
        assert!(s.valid(&h));
        let mut wrong = HeaderMap::new();
        wrong.insert(header::COOKIE, format!("{COOKIE}={}", "0".repeat(64)).parse().unwrap());
        assert!(!s.valid(&wrong));
        s.end(&h);
        assert!(!s.valid(&h));
        assert!(set_cookie(&t).contains("HttpOnly; SameSite=Strict; Path=/ui"));
    }
}
