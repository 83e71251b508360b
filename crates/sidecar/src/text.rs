//! Bytes that must be text. Environment values, KV values and template files are bytes; envsubst
//! copies them as they are, but minijinja renders Rust strings, so a jinja template can only use
//! UTF-8. These errors say exactly which input is not UTF-8 and where, instead of the silent
//! U+FFFD a lossy conversion would write into a config file.

use std::fmt;

/// The first byte of an input that is not UTF-8, and its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidByte {
    pub offset: usize,
    pub byte: u8,
}

impl InvalidByte {
    /// `None` when `bytes` is valid UTF-8.
    pub fn find(bytes: &[u8]) -> Option<Self> {
        let error = std::str::from_utf8(bytes).err()?;
        let offset = error.valid_up_to();
        Some(Self {
            offset,
            byte: bytes.get(offset).copied().unwrap_or_default(),
        })
    }
}

impl InvalidByte {
    /// Where a failed `String::from_utf8` stopped.
    pub fn of(error: &std::string::FromUtf8Error) -> Self {
        let offset = error.utf8_error().valid_up_to();
        Self {
            offset,
            byte: error.as_bytes().get(offset).copied().unwrap_or_default(),
        }
    }
}

impl fmt::Display for InvalidByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte 0x{:02X} at offset {}", self.byte, self.offset)
    }
}

/// An input a jinja template needs as text that is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotText {
    #[error(
        "environment variable {name} is not valid UTF-8 ({at}): a jinja template renders text and cannot insert it (an envsubst template copies the bytes as they are)"
    )]
    Env { name: String, at: InvalidByte },
    #[error(
        "KV key {key:?} in {layer} is not valid UTF-8 ({at}): a jinja template renders text and cannot insert it"
    )]
    Kv {
        key: String,
        layer: String,
        at: InvalidByte,
    },
    #[error(
        "{path}:{line}:{column}: not valid UTF-8 ({at}): a jinja template must be UTF-8 text (an envsubst template may hold any bytes)"
    )]
    Template {
        path: String,
        line: usize,
        column: usize,
        at: InvalidByte,
    },
}

impl NotText {
    /// A template file's content as text, or where it stops being UTF-8.
    pub fn template(path: &str, bytes: Vec<u8>) -> Result<String, NotText> {
        String::from_utf8(bytes).map_err(|error| {
            let at = InvalidByte::of(&error);
            let (line, column) = sluice_text::line_col(error.as_bytes(), at.offset);
            NotText::Template {
                path: path.to_owned(),
                line,
                column,
                at,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_invalid_byte() {
        assert_eq!(InvalidByte::find("café".as_bytes()), None);
        assert_eq!(
            InvalidByte::find(b"caf\xe9!\xff"),
            Some(InvalidByte {
                offset: 3,
                byte: 0xE9
            })
        );
        let error = NotText::template("t.j2", b"ok\n\xc3\xa9 \xe9".to_vec()).expect_err("latin-1");
        assert_eq!(
            error.to_string(),
            "t.j2:2:3: not valid UTF-8 (byte 0xE9 at offset 6): a jinja template must be UTF-8 text (an envsubst template may hold any bytes)"
        );
    }
}
