//! Request paths in one canonical form, so that what a route's rules see is what the instance
//! receives: `/admin/x`, `/%61dmin/x`, `//admin/x`, `/./admin/x` and `/y/../admin/x` are one
//! path, and a prefix rule on `/admin/` cannot be stepped around by spelling it another way.
//!
//! The form (RFC 3986 §6.2.2): percent-encoded unreserved characters decoded (`%61` → `a`,
//! `%2E` → `.`), other escapes kept with upper-case hex digits (`%2f` → `%2F`: an encoded
//! slash stays data, not a separator), runs of `/` merged into one (as nginx's
//! `merge_slashes`), then `.` and `..` segments removed (§5.2.4; `..` never climbs above the
//! root). Case is kept: paths are case-sensitive. A `%` not followed by two hex digits is an
//! error.

use std::borrow::Cow;

/// Why a path cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a '%' not followed by two hex digits in the request path")]
    BadEscape,
}

/// `path` (starting with `/`, without its query) in canonical form; borrowed when it already
/// is, which is the common case and costs one scan.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_canonical(path.as_bytes())? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// A request target (`path[?query]`) with its path in canonical form; the query as it is.
pub fn normalize_target(target: &str) -> Result<Cow<'_, str>, PathError> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    Ok(match (normalize(path)?, query) {
        (Cow::Borrowed(_), _) => Cow::Borrowed(target),
        (Cow::Owned(path), None) => Cow::Owned(path),
        (Cow::Owned(path), Some(query)) => Cow::Owned(format!("{path}?{query}")),
    })
}

/// Whether the path has nothing to decode, merge or remove (checking its escapes on the way).
fn is_canonical(path: &[u8]) -> Result<bool, PathError> {
    let mut canonical = true;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' => {
                let (hi, lo) = escape_at(path, i)?;
                let byte = hex(hi) << 4 | hex(lo);
                if is_unreserved(byte) || hi.is_ascii_lowercase() || lo.is_ascii_lowercase() {
                    canonical = false;
                }
            }
            b'/' => {
                let next = &path[i + 1..];
                if next.starts_with(b"/")
                    || next == b"."
                    || next.starts_with(b"./")
                    || next == b".."
                    || next.starts_with(b"../")
                {
                    canonical = false;
                }
            }
            _ => {}
        }
    }
    Ok(canonical)
}

/// The two hex digits after the `%` at `i`.
fn escape_at(path: &[u8], i: usize) -> Result<(u8, u8), PathError> {
    match path.get(i + 1..i + 3) {
        Some(&[hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => Ok((hi, lo)),
        _ => Err(PathError::BadEscape),
    }
}

fn hex(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Unreserved characters decoded, other escapes upper-cased, every other byte copied (so a
/// UTF-8 input stays UTF-8: what is decoded is ASCII).
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..].iter().position(|&b| b == b'%').map(|p| i + p) {
        out.push_str(&path[copied..at]);
        let (hi, lo) = escape_at(bytes, at)?;
        let byte = hex(hi) << 4 | hex(lo);
        if is_unreserved(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(hi.to_ascii_uppercase()));
            out.push(char::from(lo.to_ascii_uppercase()));
        }
        i = at + 3;
        copied = i;
    }
    out.push_str(&path[copied..]);
    Ok(out)
}

/// Empty segments (runs of `/`) merged, `.` dropped, `..` removing the segment before it; a
/// path that ended in a directory (`/a/.`, `/a/b/..`) keeps its trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_in_directory = false;
    for segment in path.split('/').skip(1) {
        ends_in_directory = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            name => kept.push(name),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_directory || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn norm(path: &str) -> String {
        normalize(path).unwrap().into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for path in [
            "/",
            "/a/b",
            "/a/b/",
            "/a.b/c..d/.e",
            "/%2F%C3%A9",
            "/a~b_c-d",
        ] {
            assert!(matches!(normalize(path), Ok(Cow::Borrowed(_))), "{path}");
        }
    }

    #[test]
    fn spellings_of_one_path_become_that_path() {
        for spelling in [
            "/admin/secret",
            "/%61dmin/secret",
            "/%61%64%6D%69%6e/secret",
            "//admin/secret",
            "/admin//secret",
            "/./admin/secret",
            "/x/../admin/secret",
            "/x/y/../../admin/./secret",
            "/%2e%2e/admin/secret",
            "/x/%2E%2E/admin/secret",
            "/../../admin/secret",
        ] {
            assert_eq!(norm(spelling), "/admin/secret", "{spelling}");
        }
    }

    #[test]
    fn directories_escapes_and_case() {
        assert_eq!(norm("/a/."), "/a/");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("//"), "/");
        assert_eq!(norm("/a/b/"), "/a/b/");
        // An encoded slash is data: kept, hex upper-cased.
        assert_eq!(norm("/admin%2fsecret"), "/admin%2Fsecret");
        assert_eq!(norm("/a%2F..%2Fb"), "/a%2F..%2Fb");
        // Paths are case-sensitive.
        assert_eq!(norm("/ADMIN/./x"), "/ADMIN/x");
        // Bytes beyond ASCII are copied as they are.
        assert_eq!(norm("/caf\u{e9}/./%41"), "/caf\u{e9}/A");
    }

    #[test]
    fn targets_keep_their_query() {
        assert_eq!(
            normalize_target("/a/./b?x=/./&y=%2e").unwrap(),
            "/a/b?x=/./&y=%2e"
        );
        assert!(matches!(
            normalize_target("/a?b//"),
            Ok(Cow::Borrowed("/a?b//"))
        ));
    }

    #[test]
    fn broken_escapes_are_errors() {
        for path in ["/a%", "/a%2", "/a%zz", "/a%2g/b", "/%%41"] {
            assert_eq!(normalize(path), Err(PathError::BadEscape), "{path}");
        }
    }
}
