//! Paths of the real WebAssembly components the policy host is tested and benchmarked with.
//!
//! Contract: each constant is the absolute path of a `wasm32-wasip2` component compiled by this
//! crate's build script from the sources in this repository — the shipped policies
//! (`mirror-primary`, `urlprefix`, `ecp-authz`, `jwt`) and the test-only guests that misbehave
//! on purpose (loop forever, grab memory, panic), implement the wrong world, check a header
//! (`header_gate`; `key_check`, the guide's example), forward every request without reading it
//! (`noop_request`), answer with a report of everything the request resource showed them
//! (`request_reader`), or read the parts their config names and let the host reuse the answer
//! (`reusing_request`). Building this
//! crate fails, naming `scripts/setup.sh`, when the target is not installed; it never hands out
//! a stale or missing file.
//!
//! The misbehaving guests answer normally unless asked: `authz` by the peer's listener name,
//! `health` by the instance id or the text its probe read, `routing` by an instance id in the
//! catalog — `loop`, `greedy` (grab memory until the cap) or `panic`. Their `configure` fails
//! when the config JSON has `"configure": "fail"`, panics with `"panic"` and loops with `"loop"`.
//!
//! [`python_example`] builds a Python policy from `examples/policies-python/` with componentize-py
//! at run time (cached by source hash under the target directory); it panics with the install
//! hint when componentize-py is missing, so only the tests that use it need it.

mod python;

pub use python::python_example;

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
