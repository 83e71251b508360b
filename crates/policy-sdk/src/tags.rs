//! Service tags in Fabio's style: `PREFIX<head> key=value key=value …`.
//!
//! A tag is a head (what follows the prefix up to the first space) and options separated by
//! spaces. Values cannot contain spaces (as in Fabio); an option without `=` is a flag with an
//! empty value.

use std::fmt;

/// A parsed tag: the head and its options in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag<'a> {
    /// What follows the prefix, up to the first space (`/web`, `example.com/web`, `:1972`).
    pub head: &'a str,
    /// `key=value` options, in order.
    pub options: Vec<(&'a str, &'a str)>,
}

impl<'a> Tag<'a> {
    /// The value of option `key`, if present.
    pub fn option(&self, key: &str) -> Option<&'a str> {
        self.options
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

/// Why a tag carrying the prefix could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagError {
    /// Nothing follows the prefix.
    EmptyHead,
    /// An option such as `=value` has no key.
    EmptyKey(String),
    /// The same option is given twice.
    DuplicateOption(String),
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagError::EmptyHead => write!(f, "nothing follows the tag prefix"),
            TagError::EmptyKey(option) => write!(f, "option `{option}` has no name"),
            TagError::DuplicateOption(key) => write!(f, "option `{key}` is given more than once"),
        }
    }
}

impl std::error::Error for TagError {}

/// Parses `tag` if it starts with `prefix`; `None` for tags meant for something else.
pub fn parse<'a>(tag: &'a str, prefix: &str) -> Option<Result<Tag<'a>, TagError>> {
    let rest = tag.trim().strip_prefix(prefix)?;
    Some(parse_rest(rest))
}

fn parse_rest(rest: &str) -> Result<Tag<'_>, TagError> {
    let mut words = rest.split_whitespace();
    let head = match rest.chars().next() {
        // `urlprefix- strip=/x`: the head is missing, not `strip=/x`.
        Some(c) if !c.is_whitespace() => words.next().unwrap_or_default(),
        _ => return Err(TagError::EmptyHead),
    };
    let mut options: Vec<(&str, &str)> = Vec::new();
    for word in words {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        if key.is_empty() {
            return Err(TagError::EmptyKey(word.to_owned()));
        }
        if options.iter().any(|(k, _)| *k == key) {
            return Err(TagError::DuplicateOption(key.to_owned()));
        }
        options.push((key, value));
    }
    Ok(Tag { head, options })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_head_and_options_in_order() {
        let tag = parse("urlprefix-/web strip=/web proto=https", "urlprefix-")
            .unwrap()
            .unwrap();
        assert_eq!(tag.head, "/web");
        assert_eq!(tag.options, vec![("strip", "/web"), ("proto", "https")]);
        assert_eq!(tag.option("proto"), Some("https"));
        assert_eq!(tag.option("weight"), None);
    }

    #[test]
    fn other_tags_are_not_ours() {
        assert_eq!(parse("primary", "urlprefix-"), None);
        assert_eq!(parse("fabio-/web", "urlprefix-"), None);
        assert!(parse("fabio-/web", "fabio-").is_some());
    }

    #[test]
    fn malformed_tags_say_why() {
        assert_eq!(
            parse("urlprefix-", "urlprefix-"),
            Some(Err(TagError::EmptyHead))
        );
        assert_eq!(
            parse("urlprefix- strip=/a", "urlprefix-"),
            Some(Err(TagError::EmptyHead))
        );
        assert_eq!(
            parse("urlprefix-/a =x", "urlprefix-"),
            Some(Err(TagError::EmptyKey("=x".into())))
        );
        assert_eq!(
            parse("urlprefix-/a strip=/a strip=/b", "urlprefix-"),
            Some(Err(TagError::DuplicateOption("strip".into())))
        );
    }

    #[test]
    fn flags_have_empty_values() {
        let tag = parse("urlprefix-/a tlsskipverify", "urlprefix-")
            .unwrap()
            .unwrap();
        assert_eq!(tag.option("tlsskipverify"), Some(""));
    }
}
