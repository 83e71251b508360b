//! The request a `request` policy decides on, as the host keeps it during the call: the `http`
//! interface's `request` resource reads from it on demand.
//!
//! The caller fills one [`RequestView`] per request and may keep it for the next: its buffers
//! keep their capacity, so a warm call builds the view without allocating, and only the parts
//! the guest asks for are copied into it.

use std::ops::Range;

use wasmtime::component::Resource;

use crate::bindings::http_imports::{self, RequestHead};
use crate::bindings::types::{HttpRequest, Peer, RouteInfo};
use crate::engine::GuestState;
use crate::reads::Part;

/// One request as `request` policies see it. Build it with the setters, or from a whole
/// [`HttpRequest`] with [`RequestView::copy_from`].
#[derive(Debug, Clone)]
pub struct RequestView {
    method: String,
    scheme: String,
    host: String,
    path: String,
    query: Option<String>,
    /// Every field's name (lower case) and value, back to back.
    field_bytes: Vec<u8>,
    fields: Vec<FieldAt>,
    /// The connection the request came on; the caller updates it in place.
    pub peer: Peer,
    /// The route the request matched; the caller updates it in place.
    pub route: RouteInfo,
}

impl Default for RequestView {
    fn default() -> Self {
        RequestView {
            method: String::new(),
            scheme: String::new(),
            host: String::new(),
            path: String::new(),
            query: None,
            field_bytes: Vec::new(),
            fields: Vec::new(),
            peer: empty_peer(),
            route: RouteInfo {
                listener: String::new(),
                name: String::new(),
                service: String::new(),
                allowed_services: Vec::new(),
            },
        }
    }
}

#[derive(Debug, Clone)]
struct FieldAt {
    name: Range<usize>,
    value: Range<usize>,
}

/// A peer with nothing known yet, to be filled in place.
pub fn empty_peer() -> Peer {
    Peer {
        listener: String::new(),
        source_address: String::new(),
        source_port: 0,
        sni: None,
        alpn: None,
        client_certificate: None,
    }
}

/// Replaces `slot`'s text with `text`, keeping its allocation.
pub fn set_text(slot: &mut String, text: &str) {
    slot.clear();
    slot.push_str(text);
}

/// Text as the contract carries it: as is when UTF-8 (checked whole first, the usual case),
/// else with each invalid sequence replaced by U+FFFD.
pub fn lossy_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

impl RequestView {
    /// Sets the request line's parts and forgets the previous request's fields.
    pub fn set_request_line(
        &mut self,
        method: &str,
        scheme: &str,
        host: Option<&[u8]>,
        path: &str,
        query: Option<&str>,
    ) {
        set_text(&mut self.method, method);
        set_text(&mut self.scheme, scheme);
        set_text(&mut self.host, &lossy_text(host.unwrap_or_default()));
        set_text(&mut self.path, path);
        match (query, &mut self.query) {
            (Some(query), Some(slot)) => set_text(slot, query),
            (query, slot) => *slot = query.map(str::to_owned),
        }
        self.field_bytes.clear();
        self.fields.clear();
    }

    /// Adds a field (its name is stored in lower case).
    pub fn push_field(&mut self, name: &[u8], value: &[u8]) {
        let start = self.field_bytes.len();
        self.field_bytes.extend_from_slice(name);
        self.field_bytes[start..].make_ascii_lowercase();
        let name_end = self.field_bytes.len();
        self.field_bytes.extend_from_slice(value);
        self.fields.push(FieldAt {
            name: start..name_end,
            value: name_end..self.field_bytes.len(),
        });
    }

    /// Makes this view show `request` (the form `policy test` cases and tests give).
    pub fn copy_from(&mut self, request: &HttpRequest) {
        self.set_request_line(
            &request.method,
            &request.scheme,
            Some(request.host.as_bytes()),
            &request.path,
            request.query.as_deref(),
        );
        for (name, value) in &request.headers {
            self.push_field(name.as_bytes(), value.as_bytes());
        }
        // Usually the same as the previous request's: kept then, as the proxy keeps them.
        if self.peer != request.peer {
            self.peer = request.peer.clone();
        }
        if self.route != request.route {
            self.route = request.route.clone();
        }
    }

    /// The whole request copied out, for modules built against contract 0.2.0.
    pub fn to_http_request(&self) -> HttpRequest {
        HttpRequest {
            method: self.method.clone(),
            scheme: self.scheme.clone(),
            host: self.host.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            headers: self.all_fields().collect(),
            peer: self.peer.clone(),
            route: self.route.clone(),
        }
    }

    /// Bytes this request holds, for the host's input size limit.
    pub(crate) fn size(&self) -> usize {
        128 + self.method.len()
            + self.host.len()
            + self.path.len()
            + self.query.as_ref().map_or(0, String::len)
            + self.field_bytes.len()
            + 16 * self.fields.len()
            + crate::policy::peer_size(&self.peer)
            + self.route.listener.len()
            + self.route.name.len()
            + self.route.service.len()
            + self
                .route
                .allowed_services
                .iter()
                .map(String::len)
                .sum::<usize>()
    }

    /// Appends the bytes of `part` to an answer's key: each value length-prefixed, so that no
    /// two different requests write the same key.
    pub(crate) fn write_part(&self, part: &Part, key: &mut Vec<u8>) {
        match part {
            Part::Method => put(key, self.method.as_bytes()),
            Part::Scheme => put(key, self.scheme.as_bytes()),
            Part::Host => put(key, self.host.as_bytes()),
            Part::Path => put(key, self.path.as_bytes()),
            Part::Query => put_optional(key, self.query.as_deref().map(str::as_bytes)),
            Part::Field(name) => put_all(key, self.values_named(name)),
            Part::AllFields => put_all(
                key,
                self.fields.iter().flat_map(|field| {
                    [field.name.clone(), field.value.clone()].map(|at| &self.field_bytes[at])
                }),
            ),
            Part::Peer => write_peer(&self.peer, key),
            Part::Route => {
                let route = &self.route;
                for text in [&route.listener, &route.name, &route.service] {
                    put(key, text.as_bytes());
                }
                put_all(key, route.allowed_services.iter().map(|s| s.as_bytes()));
            }
        }
    }

    fn values_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |field| {
                self.field_bytes[field.name.clone()].eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|field| &self.field_bytes[field.value.clone()])
    }

    fn all_fields(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.fields.iter().map(|field| {
            (
                lossy_text(&self.field_bytes[field.name.clone()]).into_owned(),
                lossy_text(&self.field_bytes[field.value.clone()]).into_owned(),
            )
        })
    }
}

/// `bytes`, after its length.
fn put(key: &mut Vec<u8>, bytes: &[u8]) {
    key.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    key.extend_from_slice(bytes);
}

/// How many items, then each one after its length.
fn put_all<'a>(key: &mut Vec<u8>, items: impl Iterator<Item = &'a [u8]>) {
    let count_at = key.len();
    key.extend_from_slice(&0u32.to_le_bytes());
    let mut count = 0u32;
    for item in items {
        put(key, item);
        count += 1;
    }
    key[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
}

fn put_optional(key: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            key.push(1);
            put(key, bytes);
        }
        None => key.push(0),
    }
}

fn write_peer(peer: &Peer, key: &mut Vec<u8>) {
    for text in [&peer.listener, &peer.source_address] {
        put(key, text.as_bytes());
    }
    key.extend_from_slice(&peer.source_port.to_le_bytes());
    put_optional(key, peer.sni.as_deref().map(str::as_bytes));
    put_optional(key, peer.alpn.as_deref().map(str::as_bytes));
    // A certificate is told apart by its fingerprint: every other field is signed into it.
    let certificate = peer.client_certificate.as_ref();
    put_optional(key, certificate.map(|c| c.sha256_fingerprint.as_bytes()));
}

impl http_imports::Host for GuestState {}

/// The `request-head` resource's methods. Only one request is ever lent to a guest at a time (the
/// one of the call in progress), so every handle reads the same view.
impl http_imports::HostRequestHead for GuestState {
    fn method(&mut self, _: Resource<RequestHead>) -> String {
        self.reads.read(Part::Method);
        self.request.method.clone()
    }

    fn scheme(&mut self, _: Resource<RequestHead>) -> String {
        self.reads.read(Part::Scheme);
        self.request.scheme.clone()
    }

    fn host(&mut self, _: Resource<RequestHead>) -> String {
        self.reads.read(Part::Host);
        self.request.host.clone()
    }

    fn path(&mut self, _: Resource<RequestHead>) -> String {
        self.reads.read(Part::Path);
        self.request.path.clone()
    }

    fn query(&mut self, _: Resource<RequestHead>) -> Option<String> {
        self.reads.read(Part::Query);
        self.request.query.clone()
    }

    fn header(&mut self, _: Resource<RequestHead>, name: String) -> Option<String> {
        let value = self.request.values_named(&name).next().map(lossy_text);
        let value = value.map(std::borrow::Cow::into_owned);
        self.reads.read_field(name);
        value
    }

    fn header_values(&mut self, _: Resource<RequestHead>, name: String) -> Vec<String> {
        let values = self
            .request
            .values_named(&name)
            .map(|value| lossy_text(value).into_owned())
            .collect();
        self.reads.read_field(name);
        values
    }

    fn header_bytes(&mut self, _: Resource<RequestHead>, name: String) -> Option<Vec<u8>> {
        let value = self.request.values_named(&name).next().map(<[u8]>::to_vec);
        self.reads.read_field(name);
        value
    }

    fn headers(&mut self, _: Resource<RequestHead>) -> Vec<(String, String)> {
        self.reads.read(Part::AllFields);
        self.request.all_fields().collect()
    }

    fn peer(&mut self, _: Resource<RequestHead>) -> Peer {
        self.reads.read(Part::Peer);
        self.request.peer.clone()
    }

    fn route(&mut self, _: Resource<RequestHead>) -> RouteInfo {
        self.reads.read(Part::Route);
        self.request.route.clone()
    }

    fn cache_answer(&mut self, _: Resource<RequestHead>, ttl_ms: u32) {
        self.reads.allow_reuse(ttl_ms);
    }

    /// The host lends requests only as borrows, which the guest never drops.
    fn drop(&mut self, _: Resource<RequestHead>) -> wasmtime::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_in_any_case_and_kept_in_order() {
        let mut view = RequestView::default();
        view.set_request_line("GET", "http", Some(b"example.test"), "/a", Some("x=1"));
        view.push_field(b"X-Key", b"one");
        view.push_field(b"accept", b"*/*");
        view.push_field(b"x-key", b"two\xff");
        let values: Vec<&[u8]> = view.values_named("X-KEY").collect();
        assert_eq!(values, [&b"one"[..], &b"two\xff"[..]]);
        let copied = view.to_http_request();
        assert_eq!(copied.headers[0], ("x-key".into(), "one".into()));
        assert_eq!(copied.headers[2].1, "two\u{fffd}");
        assert_eq!(copied.query.as_deref(), Some("x=1"));
    }

    #[test]
    fn a_new_request_line_forgets_the_previous_fields_and_query() {
        let mut view = RequestView::default();
        view.set_request_line("GET", "http", None, "/a", Some("x=1"));
        view.push_field(b"x-key", b"one");
        view.set_request_line("POST", "https", Some(b"h"), "/b", None);
        assert_eq!(view.values_named("x-key").count(), 0);
        let copied = view.to_http_request();
        assert_eq!((copied.method.as_str(), copied.query), ("POST", None));
        assert_eq!(copied.host, "h");
    }
}
