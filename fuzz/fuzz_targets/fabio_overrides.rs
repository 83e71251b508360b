//! `[routing] overrides` / `overrides_key`: Fabio's `route add|del|weight` lines, parsed by
//! `sluice_config::parse_overrides` from arbitrary text (a KV value can hold anything).
//!
//! Properties:
//! - never panics;
//! - an accepted text yields one command per line that is neither blank nor a comment, each
//!   within the grammar (service name without `/`, `:` or spaces; route path starting with `/`;
//!   lower-case host; weight in (0, 1]), and printing the commands back and parsing them gives
//!   the same commands;
//! - a rejected text has at least one error, at most one per line, in line order, each at a
//!   line of the input and a column within it, and that line alone fails the same way.
#![no_main]

use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use sluice_config::{OverrideLineError, RouteKey, RouteOverride, parse_overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_overrides(text) {
        Ok(commands) => check_accepted(text, &commands),
        Err(errors) => check_rejected(text, &errors),
    }
});

fn check_accepted(text: &str, commands: &[RouteOverride]) {
    let lines = text
        .split('\n')
        .filter(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|word| !word.starts_with('#'))
        })
        .count();
    assert_eq!(commands.len(), lines, "one command per non-comment line");
    let mut printed = String::new();
    for command in commands {
        check_grammar(command);
        print(&mut printed, command);
    }
    assert_eq!(
        parse_overrides(&printed).as_deref(),
        Ok(commands),
        "printed commands:\n{printed}"
    );
}

fn check_grammar(command: &RouteOverride) {
    let (service, route, weight) = match command {
        RouteOverride::Add {
            service,
            route,
            weight,
            ..
        } => (service, Some(route), *weight),
        RouteOverride::Del { service, route, .. } => (service, route.as_ref(), None),
        RouteOverride::Weight {
            service,
            route,
            weight,
        } => (service, Some(route), Some(*weight)),
    };
    assert!(
        !service.is_empty()
            && !service.contains(['/', ':'])
            && !service.contains(char::is_whitespace),
        "service {service:?}"
    );
    if let Some(route) = route {
        assert!(route.path.starts_with('/'), "path {:?}", route.path);
        assert!(!route.path.contains(char::is_whitespace));
        if let Some(host) = &route.host {
            assert!(!host.is_empty() && !host.contains('/'));
            assert_eq!(host, &host.to_ascii_lowercase());
        }
    }
    if let Some(w) = weight {
        assert!(w.is_finite() && w > 0.0 && w <= 1.0, "weight {w}");
    }
}

/// The command as a line of the override language.
fn print(out: &mut String, command: &RouteOverride) {
    let key = |route: &RouteKey| format!("{}{}", route.host.as_deref().unwrap_or(""), route.path);
    // `write!` to a String cannot fail.
    let _ = match command {
        RouteOverride::Add {
            service,
            route,
            target,
            weight,
        } => {
            let _ = write!(out, "route add {service} {} http://{target}/", key(route));
            match weight {
                Some(w) => writeln!(out, " weight {w}"),
                None => writeln!(out),
            }
        }
        RouteOverride::Del {
            service,
            route,
            target,
        } => {
            let _ = write!(out, "route del {service}");
            if let Some(route) = route {
                let _ = write!(out, " {}", key(route));
            }
            if let Some(target) = target {
                let _ = write!(out, " http://{target}");
            }
            writeln!(out)
        }
        RouteOverride::Weight {
            service,
            route,
            weight,
        } => writeln!(out, "route weight {service} {} weight {weight}", key(route)),
    };
}

fn check_rejected(text: &str, errors: &[OverrideLineError]) {
    assert!(!errors.is_empty(), "rejected without an error");
    let lines: Vec<&str> = text.split('\n').collect();
    let mut previous_line = 0;
    for error in errors {
        assert!(
            (1..=lines.len()).contains(&error.line),
            "line {} outside 1..={}: {error}",
            error.line,
            lines.len()
        );
        assert!(error.line > previous_line, "errors out of line order");
        previous_line = error.line;
        let line = lines[error.line - 1];
        assert!(
            (1..=line.chars().count() + 1).contains(&error.column),
            "column {} outside line {line:?}: {error}",
            error.column
        );
        // The line alone: the same error, on line 1.
        let alone = parse_overrides(line).expect_err("the line alone is rejected too");
        assert_eq!(alone.len(), 1);
        assert_eq!(
            (alone[0].column, &alone[0].message),
            (error.column, &error.message)
        );
    }
}
