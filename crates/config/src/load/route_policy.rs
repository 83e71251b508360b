//! `policy` and `policy_services` on a route: the `request` policy asked about each request,
//! and the services it may send a request to instead of the route's own.

use toml::Spanned;

use super::Cx;
use crate::diag::closest;
use crate::policy::{PolicyConfig, PolicyWorld};
use crate::raw::RawRoute;

impl Cx<'_> {
    /// `policy_services = ["canary", ...]`: known services, each once; only with a `policy`.
    pub(super) fn policy_services(&mut self, r: &RawRoute, service_names: &[&str]) -> Vec<String> {
        let Some(list) = &r.policy_services else {
            return Vec::new();
        };
        if r.policy.is_none() {
            self.error_hint(
                Some(list.span()),
                "`policy_services` without a `policy`",
                "name the request policy that picks among them: policy = \"NAME\"",
            );
        }
        let mut out: Vec<String> = Vec::new();
        for s in list.get_ref() {
            let name = s.get_ref();
            if !service_names.contains(&name.as_str()) {
                let hint = closest(name, service_names).map_or_else(
                    || format!("define it with [[service]] name = \"{name}\""),
                    |c| format!("did you mean `{c}`?"),
                );
                self.error_hint(
                    Some(s.span()),
                    format!("policy_services refers to unknown service `{name}`"),
                    hint,
                );
            } else if out.contains(name) {
                self.error(Some(s.span()), format!("service `{name}` is listed twice"));
            } else {
                out.push(name.clone());
            }
        }
        out
    }

    /// Every `[[route]] policy` (and `[routing] request_policies` value) names a
    /// `world = "request"` policy.
    pub(super) fn request_policy_references(&mut self, policies: &[PolicyConfig]) {
        for (referrer, p) in std::mem::take(&mut self.request_policy_refs) {
            self.request_policy_reference(referrer, &p, policies);
        }
    }

    fn request_policy_reference(
        &mut self,
        referrer: &str,
        p: &Spanned<String>,
        policies: &[PolicyConfig],
    ) {
        let name = p.get_ref().as_str();
        match policies.iter().find(|q| q.name == name) {
            Some(q) if q.world == PolicyWorld::Request => {}
            Some(q) => self.error_hint(
                Some(p.span()),
                format!(
                    "policy `{name}` is a {} policy, not a request policy",
                    q.world.as_str()
                ),
                "a route's `policy` (or [routing] request_policies) needs a [[policy]] with world = \"request\"",
            ),
            None => {
                let names: Vec<&str> = policies.iter().map(|q| q.name.as_str()).collect();
                let hint = closest(name, &names).map_or_else(
                    || format!("define it with [[policy]] name = \"{name}\", world = \"request\""),
                    |c| format!("did you mean `{c}`?"),
                );
                self.error_hint(
                    Some(p.span()),
                    format!("{referrer} refers to unknown policy `{name}`"),
                    hint,
                );
            }
        }
    }
}
