//! `request` guest that lets the host reuse its answers (`cache-answer`), to prove what the
//! host keys them by. Config: `{"reads": [...], "ttl_ms": N}`; each entry of `reads` names a
//! part the call reads: `method`, `scheme`, `host`, `path`, `query`, `headers`, `peer`,
//! `route`, `field:NAME` or `kv:KEY`. Every answer forwards with `x-seen` set to what was read,
//! so a reused answer shows the request it was first given to.

use sluice_policy_sdk::{Action, Request, RequestPolicy, host, request};

struct Reusing {
    reads: Vec<String>,
    ttl_ms: u64,
}

impl RequestPolicy for Reusing {
    fn configure(config: &str) -> Result<Self, String> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let reads = config["reads"]
            .as_array()
            .ok_or("`reads` must be a list")?
            .iter()
            .map(|r| r.as_str().map(str::to_owned).ok_or("`reads` holds strings"))
            .collect::<Result<_, _>>()?;
        let ttl_ms = config["ttl_ms"]
            .as_u64()
            .ok_or("`ttl_ms` must be a number")?;
        Ok(Reusing { reads, ttl_ms })
    }

    fn on_request(&self, req: &Request<'_>) -> Action {
        let seen: Vec<String> = self.reads.iter().map(|part| read(req, part)).collect();
        if self.ttl_ms > 0 {
            req.cache_answer(std::time::Duration::from_millis(self.ttl_ms));
        }
        request::forward()
            .set_header("x-seen", &seen.join(";"))
            .into()
    }
}

fn read(req: &Request<'_>, part: &str) -> String {
    match part {
        "method" => req.method(),
        "scheme" => req.scheme(),
        "host" => req.host(),
        "path" => req.path(),
        "query" => req.query().unwrap_or_default(),
        "headers" => format!("{} fields", req.headers().len()),
        "peer" => req.peer().source_address,
        "route" => req.route().name,
        _ => match part.split_once(':') {
            Some(("field", name)) => req.header(name).unwrap_or_default(),
            Some(("kv", key)) => host::kv_get(key).unwrap_or_default(),
            _ => format!("unknown part {part}"),
        },
    }
}

sluice_policy_sdk::export_request!(Reusing);
