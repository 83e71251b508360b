//! Answers to ACME HTTP-01 challenges (RFC 8555 §8.3): while the binary's ACME client has an
//! order open, the CA fetches `http://NAME/.well-known/acme-challenge/TOKEN` and must get the
//! key authorization back. Sluice answers such requests itself on every plain-HTTP listener,
//! before routing, so no route or instance has to know about them.
//!
//! The table is empty almost always: a request pays one atomic load to learn that, and a
//! path comparison only while a challenge is pending.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The path prefix the CA asks under.
const PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending HTTP-01 challenges: token → key authorization.
#[derive(Debug, Default)]
pub struct AcmeChallenges {
    tokens: RwLock<HashMap<String, String>>,
    any: AtomicBool,
}

impl AcmeChallenges {
    /// Answers `GET /.well-known/acme-challenge/{token}` with `key_authorization` from now on.
    pub fn add(&self, token: &str, key_authorization: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.insert(token.to_owned(), key_authorization.to_owned());
        self.any.store(true, Relaxed);
    }

    /// Whether no challenge is pending.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Relaxed)
    }

    /// Stops answering for `token`.
    pub fn remove(&self, token: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.remove(token);
        self.any.store(!tokens.is_empty(), Relaxed);
    }

    /// The key authorization for a request to `path`, if it asks for a pending token.
    pub(crate) fn answer(&self, path: &str) -> Option<String> {
        if !self.any.load(Relaxed) {
            return None;
        }
        let token = path.strip_prefix(PREFIX)?;
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens.get(token).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_tokens_are_answered_and_nothing_else() {
        let c = AcmeChallenges::default();
        assert_eq!(c.answer("/.well-known/acme-challenge/abc"), None);
        c.add("abc", "abc.thumbprint");
        assert_eq!(
            c.answer("/.well-known/acme-challenge/abc").as_deref(),
            Some("abc.thumbprint")
        );
        assert_eq!(c.answer("/.well-known/acme-challenge/abd"), None);
        assert_eq!(c.answer("/abc"), None);
        c.remove("abc");
        assert_eq!(c.answer("/.well-known/acme-challenge/abc"), None);
        assert!(!c.any.load(Relaxed));
    }
}
