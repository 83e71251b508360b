//! `sluice-sidecar`: a container's entrypoint. It renders configuration files from the
//! environment and KV sources (envsubst or jinja templates, written atomically), waits for the
//! KV it needs with a deadline, launches the workload (one command or a Procfile's processes)
//! only after the first render, and supervises it as PID 1 or as a child subreaper: signals
//! forwarded (optionally rewritten, to the child or its process group), every zombie reaped by a
//! single owner of `waitpid`, the workload's exit code (or 128 + signal) passed through. While
//! running it re-renders on KV changes (quiescence, splay, one reload in flight, last good files
//! kept on failure), registers the service after the first passing check with a name/tags
//! chosen by a role probe, and deregisters before stopping.
//!
//! The binary links neither wasmtime nor hyper: etcd and HTTP probes use `sluice_kv`'s small
//! HTTP/1.1 client, and the runtime is a single-threaded tokio.

pub mod command;
pub mod config;
pub mod envsubst;
pub mod kvlayers;
pub mod lifecycle;
pub mod probe;
pub mod reaper;
pub mod registrar;
mod running;
pub mod signals;
pub mod supervisor;
pub mod template;
pub mod text;
pub mod write;
