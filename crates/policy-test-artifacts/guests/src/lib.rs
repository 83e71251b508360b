//! Misbehaviours shared by the test-only guests (each guest is an example of this package,
//! compiled to its own component). See `sluice-policy-test-artifacts` for what triggers them.

use std::hint::black_box;

/// Runs until the host's epoch deadline interrupts it.
pub fn spin_forever() -> ! {
    let mut turns: u64 = 0;
    loop {
        turns = black_box(turns.wrapping_add(1));
    }
}

/// Allocates (and touches) memory until the allocator fails, which aborts the guest.
pub fn grab_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xA5; 1 << 20]);
        black_box(&hoard);
    }
}

/// Misbehaves in `configure` when the config asks to (`{"configure": "fail" | "panic" | "loop"}`).
pub fn configure(config: &str) -> Result<(), String> {
    let config: serde_json::Value =
        serde_json::from_str(config).map_err(|e| format!("bad JSON: {e}"))?;
    match config.get("configure").and_then(|v| v.as_str()) {
        Some("fail") => Err("asked to fail in configure".into()),
        Some("panic") => panic!("asked to panic in configure"),
        Some("loop") => spin_forever(),
        _ => Ok(()),
    }
}

/// Misbehaves when `trigger` names a misbehaviour; returns otherwise.
pub fn misbehave_on(trigger: &str) {
    match trigger {
        "loop" => spin_forever(),
        "greedy" => grab_memory(),
        "panic" => panic!("asked to panic"),
        _ => {}
    }
}
