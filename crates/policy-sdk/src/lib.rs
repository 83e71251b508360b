//! The guest side of Sluice's policy contract (`wit/policy.wit`), for policy authors.
//!
//! Contract:
//! - A policy is a Rust type implementing one of [`RoutingPolicy`], [`HealthPolicy`],
//!   [`AuthzPolicy`] or [`RequestPolicy`], exported with [`export_routing!`],
//!   [`export_health!`], [`export_authz!`] or [`export_request!`]. The macro generates that world's bindings *in the policy crate* (so the
//!   component declares exactly one world), builds the policy from `configure`'s JSON once per
//!   instance, and answers every later call from that value.
//! - The contract's data types live in [`types`]; host services (log, clock, KV) in [`host`].
//!   Both work natively too: outside WebAssembly, [`host`] reads and records through
//!   [`testing`], so a policy's logic is unit-tested with plain `cargo test`.
//! - [`tags`] parses Fabio-style tag options and [`cidr`] matches addresses against ranges;
//!   [`request`] reads requests and builds a request policy's answers.
//! - Nothing here panics on guest input; a policy that is called before `configure` succeeded
//!   answers with its world's refusal (deny / down / error), never a trap.

pub mod cidr;
pub mod host;
pub mod request;
pub mod tags;
pub mod testing;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Bindings of the `imports` world: the contract's types and the `host` imports, generated once
/// here and reused by every policy world (see `build.rs`).
#[doc(hidden)]
// wit-bindgen's import glue is FFI (`extern "C"` declarations and raw-pointer lifting); the
// workspace denies `unsafe` everywhere else.
#[allow(unsafe_code)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "imports",
        generate_unused_types: true,
        additional_derives: [PartialEq],
    });
}

/// The data types of the contract (`interface types` in `wit/policy.wit`).
pub use __bindings::sluice::policy::types;

pub use types::{
    AccessAction, AccessRule, Action, ClientCertificate, Decision, Forward, HeaderEdit,
    HealthStatus, HttpRequest, Instance, LogLevel, Peer, ProbeError, ProbeErrorKind, ProbeKind,
    ProbeResult, Protocol, Redirect, Reply, Role, Route, RouteEntry, RouteError, RouteInfo,
    RouteTarget, TlsOptions, Up, Verdict,
};

pub use request::Request;

/// A policy of the `routing` world: catalog → routes.
pub trait RoutingPolicy: Sized + 'static {
    /// Builds the policy from its `[[policy]] config` (JSON text). An error rejects the module.
    fn configure(config: &str) -> Result<Self, String>;
    /// One entry per route or per rejected input; `Err` rejects the whole catalog.
    fn build_routes(&self, catalog: &[Instance]) -> Result<Vec<RouteEntry>, String>;
}

/// A policy of the `health` world: probe result → verdict.
pub trait HealthPolicy: Sized + 'static {
    /// Builds the policy from its `[[policy]] config` (JSON text). An error rejects the module.
    fn configure(config: &str) -> Result<Self, String>;
    /// The verdict on one probe of `instance`.
    fn evaluate(&self, instance: &Instance, probe: &ProbeResult) -> Verdict;
}

/// A policy of the `authz` world: connecting peer → allow or deny.
pub trait AuthzPolicy: Sized + 'static {
    /// Builds the policy from its `[[policy]] config` (JSON text). An error rejects the module.
    fn configure(config: &str) -> Result<Self, String>;
    /// Whether `peer` may open this connection.
    fn authorize(&self, peer: &Peer) -> Decision;
}

/// A policy of the `request` world: HTTP request → forward (edited) or reply.
pub trait RequestPolicy: Sized + 'static {
    /// Builds the policy from its `[[policy]] config` (JSON text). An error rejects the module.
    fn configure(config: &str) -> Result<Self, String>;
    /// What to do with `request`. Read only the parts you need: each read asks the host.
    fn on_request(&self, request: &Request<'_>) -> Action;
    /// Edits of the response head, called only when [`RequestPolicy::on_request`] forwarded
    /// with a `response_context` (which is handed back here). Edits nothing by default.
    fn on_response(
        &self,
        status: u16,
        headers: &[(String, String)],
        context: &str,
    ) -> Vec<HeaderEdit> {
        let _ = (status, headers, context);
        Vec::new()
    }
}

/// The message every world answers with when called before a successful `configure`.
pub const NOT_CONFIGURED: &str = "policy called before a successful configure";

include!(concat!(env!("OUT_DIR"), "/generate_world.rs"));

/// Exports a [`RoutingPolicy`] as the component's `routing` world.
#[macro_export]
macro_rules! export_routing {
    ($policy:ty) => {
        // wit-bindgen's export glue is FFI (`#[unsafe(export_name)]` functions lifting raw
        // pointers); the workspace denies `unsafe` everywhere else.
        #[allow(unsafe_code)]
        #[doc(hidden)]
        mod __sluice_policy_export {
            #[allow(unused_imports)]
            use super::*;
            $crate::__generate_world!("routing");

            ::std::thread_local! {
                static POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct Export;

            impl Guest for Export {
                fn configure(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    let policy = <$policy as $crate::RoutingPolicy>::configure(&config)?;
                    POLICY.with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(policy));
                    ::std::result::Result::Ok(())
                }

                fn build_routes(
                    catalog: ::std::vec::Vec<$crate::types::Instance>,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::types::RouteEntry>,
                    ::std::string::String,
                > {
                    POLICY.with(|slot| match &*slot.borrow() {
                        ::std::option::Option::Some(policy) => {
                            $crate::RoutingPolicy::build_routes(policy, &catalog)
                        }
                        ::std::option::Option::None => {
                            ::std::result::Result::Err($crate::NOT_CONFIGURED.into())
                        }
                    })
                }
            }

            export!(Export);
        }
    };
}

/// Exports a [`HealthPolicy`] as the component's `health` world.
#[macro_export]
macro_rules! export_health {
    ($policy:ty) => {
        // wit-bindgen's export glue is FFI (`#[unsafe(export_name)]` functions lifting raw
        // pointers); the workspace denies `unsafe` everywhere else.
        #[allow(unsafe_code)]
        #[doc(hidden)]
        mod __sluice_policy_export {
            #[allow(unused_imports)]
            use super::*;
            $crate::__generate_world!("health");

            ::std::thread_local! {
                static POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct Export;

            impl Guest for Export {
                fn configure(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    let policy = <$policy as $crate::HealthPolicy>::configure(&config)?;
                    POLICY.with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(policy));
                    ::std::result::Result::Ok(())
                }

                fn evaluate(
                    instance: $crate::types::Instance,
                    probe: $crate::types::ProbeResult,
                ) -> $crate::types::Verdict {
                    POLICY.with(|slot| match &*slot.borrow() {
                        ::std::option::Option::Some(policy) => {
                            $crate::HealthPolicy::evaluate(policy, &instance, &probe)
                        }
                        ::std::option::Option::None => {
                            $crate::types::Verdict::Down($crate::NOT_CONFIGURED.into())
                        }
                    })
                }
            }

            export!(Export);
        }
    };
}

/// Exports an [`AuthzPolicy`] as the component's `authz` world.
#[macro_export]
macro_rules! export_authz {
    ($policy:ty) => {
        // wit-bindgen's export glue is FFI (`#[unsafe(export_name)]` functions lifting raw
        // pointers); the workspace denies `unsafe` everywhere else.
        #[allow(unsafe_code)]
        #[doc(hidden)]
        mod __sluice_policy_export {
            #[allow(unused_imports)]
            use super::*;
            $crate::__generate_world!("authz");

            ::std::thread_local! {
                static POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct Export;

            impl Guest for Export {
                fn configure(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    let policy = <$policy as $crate::AuthzPolicy>::configure(&config)?;
                    POLICY.with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(policy));
                    ::std::result::Result::Ok(())
                }

                fn authorize(peer: $crate::types::Peer) -> $crate::types::Decision {
                    POLICY.with(|slot| match &*slot.borrow() {
                        ::std::option::Option::Some(policy) => {
                            $crate::AuthzPolicy::authorize(policy, &peer)
                        }
                        ::std::option::Option::None => {
                            $crate::types::Decision::Deny($crate::NOT_CONFIGURED.into())
                        }
                    })
                }
            }

            export!(Export);
        }
    };
}

/// Exports a [`RequestPolicy`] as the component's `request` world.
#[macro_export]
macro_rules! export_request {
    ($policy:ty) => {
        // wit-bindgen's export glue is FFI (`#[unsafe(export_name)]` functions lifting raw
        // pointers); the workspace denies `unsafe` everywhere else.
        #[allow(unsafe_code)]
        #[doc(hidden)]
        mod __sluice_policy_export {
            #[allow(unused_imports)]
            use super::*;
            $crate::__generate_world!("request");

            ::std::thread_local! {
                static POLICY: ::std::cell::RefCell<::std::option::Option<$policy>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct Export;

            impl Guest for Export {
                fn configure(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    let policy = <$policy as $crate::RequestPolicy>::configure(&config)?;
                    POLICY.with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(policy));
                    ::std::result::Result::Ok(())
                }

                fn on_request(
                    request: &$crate::__bindings::sluice::policy::http::RequestHead,
                ) -> $crate::types::Action {
                    POLICY.with(|slot| match &*slot.borrow() {
                        ::std::option::Option::Some(policy) => $crate::RequestPolicy::on_request(
                            policy,
                            &$crate::Request::from_host(request),
                        ),
                        ::std::option::Option::None => $crate::request::error_reply(
                            503,
                            "policy_unavailable",
                            $crate::NOT_CONFIGURED,
                        ),
                    })
                }

                fn on_response(
                    status: u16,
                    headers: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                    context: ::std::string::String,
                ) -> ::std::vec::Vec<$crate::types::HeaderEdit> {
                    POLICY.with(|slot| match &*slot.borrow() {
                        ::std::option::Option::Some(policy) => {
                            $crate::RequestPolicy::on_response(policy, status, &headers, &context)
                        }
                        ::std::option::Option::None => ::std::vec::Vec::new(),
                    })
                }
            }

            export!(Export);
        }
    };
}
