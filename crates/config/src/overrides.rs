//! `[routing] overrides`: Fabio's manual route commands, applied to what the routing policy
//! produced. One command per line; `#` starts a comment line.
//!
//! ```text
//! route add <service> <[host]/path> http://<ip>:<port>[/] [weight <w>]
//! route del <service> [<[host]/path> [http://<ip>:<port>]]
//! route weight <service> <[host]/path> weight <w>
//! ```
//!
//! Fabio's `tags "..."` and `opts "..."` forms are not supported; they are reported as errors
//! rather than ignored.

use std::net::SocketAddr;

/// One parsed command.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteOverride {
    /// Adds `target` to the route (created if absent), as an instance of `service`.
    Add {
        service: String,
        route: RouteKey,
        target: SocketAddr,
        /// The service's fixed share of the route, in (0, 1].
        weight: Option<f64>,
    },
    /// Removes `service`'s targets: everywhere, from one route, or one target of one route.
    Del {
        service: String,
        route: Option<RouteKey>,
        target: Option<SocketAddr>,
    },
    /// Gives `service` a fixed share of the route; the others share the rest.
    Weight {
        service: String,
        route: RouteKey,
        weight: f64,
    },
}

/// Where a route matches: `[host]/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteKey {
    /// Lower-case; `None` matches any host.
    pub host: Option<String>,
    pub path: String,
}

/// A command that could not be parsed: byte offset in the text and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OverrideError {
    pub(crate) offset: usize,
    pub(crate) message: String,
}

/// A command of an overrides text (e.g. read from a KV key) that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct OverrideLineError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

/// Parses an overrides text that does not come from the configuration file (a KV value): every
/// command, or every error with its line and column. Any error rejects the whole text, so a
/// half-valid set is never applied.
pub fn parse_overrides(text: &str) -> Result<Vec<RouteOverride>, Vec<OverrideLineError>> {
    let (commands, errors) = parse(text);
    if errors.is_empty() {
        return Ok(commands);
    }
    Err(errors
        .into_iter()
        .map(|error| {
            let before = &text[..error.offset.min(text.len())];
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            OverrideLineError {
                line: before.matches('\n').count() + 1,
                column: before[line_start..].chars().count() + 1,
                message: error.message,
            }
        })
        .collect())
}

/// Parses every line of `text`, collecting every error.
pub(crate) fn parse(text: &str) -> (Vec<RouteOverride>, Vec<OverrideError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let tokens: Vec<(usize, &str)> = tokens(line)
            .map(|(offset, token)| (line_start + offset, token))
            .collect();
        line_start += line.len();
        if tokens.is_empty() || tokens[0].1.starts_with('#') {
            continue;
        }
        match command(&tokens) {
            Ok(command) => out.push(command),
            Err(error) => errors.push(error),
        }
    }
    (out, errors)
}

fn tokens(line: &str) -> impl Iterator<Item = (usize, &str)> {
    line.split_whitespace()
        .map(move |token| (token.as_ptr() as usize - line.as_ptr() as usize, token))
}

fn command(tokens: &[(usize, &str)]) -> Result<RouteOverride, OverrideError> {
    let at = |index: usize, message: String| OverrideError {
        offset: tokens
            .get(index)
            .or(tokens.last())
            .map_or(0, |(offset, _)| *offset),
        message,
    };
    let word = |index: usize| tokens.get(index).map(|(_, t)| *t);
    if word(0) != Some("route") {
        return Err(at(
            0,
            "a command starts with `route` (add, del or weight)".into(),
        ));
    }
    if let Some(index) = tokens
        .iter()
        .position(|(_, t)| *t == "tags" || *t == "opts")
    {
        return Err(at(
            index,
            format!("`{}` is not supported in overrides", tokens[index].1),
        ));
    }
    let service = |index: usize| match word(index) {
        Some(s) if !s.contains('/') && !s.contains(':') => Ok(s.to_owned()),
        Some(s) => Err(at(index, format!("`{s}` is not a service name"))),
        None => Err(at(index, "a service name is missing".into())),
    };
    let route = |index: usize| match word(index) {
        Some(text) => route_key(text).ok_or_else(|| {
            at(
                index,
                format!("`{text}` is not `[host]/path` (e.g. `/web` or `example.com/`)"),
            )
        }),
        None => Err(at(index, "a route (`[host]/path`) is missing".into())),
    };
    let target = |index: usize| match word(index) {
        Some(text) => target(text).ok_or_else(|| {
            at(
                index,
                format!("`{text}` is not `http://IP:PORT` (an IP address, not a name)"),
            )
        }),
        None => Err(at(index, "a target (`http://IP:PORT`) is missing".into())),
    };
    let weight = |index: usize| {
        if word(index) != Some("weight") {
            return Err(at(index, "expected `weight <w>`".into()));
        }
        match word(index + 1).map(str::parse::<f64>) {
            Some(Ok(w)) if w.is_finite() && w > 0.0 && w <= 1.0 => Ok(w),
            _ => Err(at(index + 1, "a weight is a number in (0, 1]".into())),
        }
    };
    let end = |index: usize| {
        if tokens.len() > index {
            Err(at(index, format!("unexpected `{}`", tokens[index].1)))
        } else {
            Ok(())
        }
    };
    match word(1) {
        Some("add") => {
            let (service, route, target) = (service(2)?, route(3)?, target(4)?);
            let weight = if tokens.len() > 5 {
                let w = weight(5)?;
                end(7)?;
                Some(w)
            } else {
                None
            };
            Ok(RouteOverride::Add {
                service,
                route,
                target,
                weight,
            })
        }
        Some("del") => {
            let service = service(2)?;
            let route = if tokens.len() > 3 {
                Some(route(3)?)
            } else {
                None
            };
            let target = if tokens.len() > 4 {
                Some(target(4)?)
            } else {
                None
            };
            end(5)?;
            Ok(RouteOverride::Del {
                service,
                route,
                target,
            })
        }
        Some("weight") => {
            let (service, route, weight) = (service(2)?, route(3)?, weight(4)?);
            end(6)?;
            Ok(RouteOverride::Weight {
                service,
                route,
                weight,
            })
        }
        Some(other) => Err(at(
            1,
            format!("unknown command `route {other}` (add, del or weight)"),
        )),
        None => Err(at(0, "`route` needs add, del or weight".into())),
    }
}

fn route_key(text: &str) -> Option<RouteKey> {
    let slash = text.find('/')?;
    let host = &text[..slash];
    let valid_host = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._*".contains(&b));
    valid_host.then(|| RouteKey {
        host: (!host.is_empty()).then(|| host.to_ascii_lowercase()),
        path: text[slash..].to_owned(),
    })
}

fn target(text: &str) -> Option<SocketAddr> {
    let rest = text.strip_prefix("http://")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    authority.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_errors_point_at_the_token() {
        let text = "# manual routes\n\
                    route add web /web http://127.0.0.1:8001/ weight 0.2\n\
                    route del old\n\
                    route del web example.com/web http://127.0.0.1:8002\n\
                    route weight web /web weight 0.5\n\
                    route add web /web http://db.local:1\n\
                    route move web\n";
        let (commands, errors) = parse(text);
        assert_eq!(commands.len(), 4);
        assert_eq!(
            commands[0],
            RouteOverride::Add {
                service: "web".into(),
                route: RouteKey {
                    host: None,
                    path: "/web".into()
                },
                target: "127.0.0.1:8001".parse().unwrap_or_else(|e| panic!("{e}")),
                weight: Some(0.2),
            }
        );
        assert!(
            matches!(&commands[2], RouteOverride::Del { route: Some(RouteKey { host: Some(h), .. }), target: Some(_), .. } if h == "example.com")
        );
        assert_eq!(errors.len(), 2);
        assert!(errors[0].message.contains("not `http://IP:PORT`"));
        assert_eq!(
            &text[errors[0].offset..errors[0].offset + 16],
            "http://db.local:"
        );
        assert!(errors[1].message.contains("route move"));
        assert_eq!(&text[errors[1].offset..errors[1].offset + 4], "move");

        let errors = parse_overrides(text).expect_err("two bad lines");
        assert_eq!(
            errors
                .iter()
                .map(|e| (e.line, e.column))
                .collect::<Vec<_>>(),
            [(6, 20), (7, 7)]
        );
        assert!(
            errors[1]
                .to_string()
                .starts_with("line 7, column 7: unknown command"),
            "{}",
            errors[1]
        );
        assert_eq!(parse_overrides("# nothing\n\n").map(|c| c.len()), Ok(0));
    }
}
