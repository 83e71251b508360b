//! `[[kv]]`: key-value stores.

use std::ops::Range;

use toml::Spanned;

use super::Cx;
use crate::defaults as d;
use crate::model::*;
use crate::raw::*;

impl Cx<'_> {
    /// `[[kv]]`: each source's keys, checked for the fields its kind needs.
    pub(super) fn kv(&mut self, raw: &[Spanned<RawKv>]) -> Vec<KvConfig> {
        let mut out = Vec::new();
        for k in raw {
            let span = k.span();
            let k = k.get_ref();
            let misplaced = |s: &mut Self, kind: &str, fields: &[(&str, Option<Range<usize>>)]| {
                for (key, span) in fields {
                    if span.is_some() {
                        s.error_hint(
                            span.clone(),
                            format!("`{key}` does not apply to source = \"{kind}\""),
                            "remove it, or change the source",
                        );
                    }
                }
            };
            let path_span = k.path.as_ref().map(Spanned::span);
            let endpoints_span = k
                .endpoints
                .as_ref()
                .map(|e| e.first().map_or(span.clone(), Spanned::span));
            let timeout_span = k.request_timeout.as_ref().map(Spanned::span);
            let poll_span = k.poll.as_ref().map(Spanned::span);
            let source = match k.source.get_ref().as_str() {
                "env" => {
                    misplaced(
                        self,
                        "env",
                        &[
                            ("path", path_span),
                            ("endpoints", endpoints_span),
                            ("request_timeout", timeout_span),
                            ("poll", poll_span),
                        ],
                    );
                    KvSourceConfig::Env
                }
                "file" => {
                    misplaced(
                        self,
                        "file",
                        &[
                            ("endpoints", endpoints_span),
                            ("request_timeout", timeout_span),
                        ],
                    );
                    let Some(path) = &k.path else {
                        self.error_hint(
                            Some(k.source.span()),
                            "a file KV source needs a `path`",
                            "a directory (one file per key) or a .toml/.json document",
                        );
                        continue;
                    };
                    if path.get_ref().is_empty() {
                        self.error_hint(
                            Some(path.span()),
                            "`path` is empty",
                            "a directory or a .toml/.json document",
                        );
                    }
                    let file = path.get_ref();
                    KvSourceConfig::File(match self.src.path().parent() {
                        Some(dir) if std::path::Path::new(file).is_relative() => dir.join(file),
                        _ => file.into(),
                    })
                }
                "etcd" => {
                    misplaced(self, "etcd", &[("path", path_span), ("poll", poll_span)]);
                    let endpoints: Vec<String> = k
                        .endpoints
                        .iter()
                        .flatten()
                        .filter_map(|e| {
                            let v = e.get_ref();
                            if v.starts_with("http://") && v.len() > "http://".len() {
                                Some(v.clone())
                            } else {
                                self.error_hint(
                                    Some(e.span()),
                                    format!("invalid etcd endpoint `{v}`"),
                                    "write http://HOST:PORT (etcd's gateway over plain HTTP; TLS to etcd is not supported yet)",
                                );
                                None
                            }
                        })
                        .collect();
                    if k.endpoints.as_ref().is_none_or(Vec::is_empty) {
                        self.error_hint(
                            Some(k.source.span()),
                            "an etcd KV source needs `endpoints`",
                            "endpoints = [\"http://127.0.0.1:2379\"]",
                        );
                    }
                    KvSourceConfig::Etcd { endpoints }
                }
                _ => {
                    self.bad_choice(&k.source, "KV source", &["env", "file", "etcd"]);
                    continue;
                }
            };
            out.push(KvConfig {
                source,
                prefix: k
                    .prefix
                    .as_ref()
                    .map(|p| p.get_ref().clone())
                    .unwrap_or_default(),
                request_timeout: self.duration(k.request_timeout.as_ref(), d::KV_REQUEST_TIMEOUT),
                poll: self.duration(k.poll.as_ref(), d::KV_POLL),
            });
        }
        out
    }
}
