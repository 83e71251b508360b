//! Positions in text for error messages: a byte offset becomes a 1-based line and a 1-based
//! column counted in characters, the way editors and `file:line:col` readers count.
//!
//! Contract, the same for every caller (the configuration loader, KV file sources, the
//! sidecar's templates and environment substitution):
//! - lines are separated by `\n` (a `\r` before it is part of the line);
//! - an offset past the end is the end; an offset inside a character is that character;
//! - bytes that are not UTF-8 each count as one column (as the U+FFFD each stands for when
//!   the text is shown), so a position in a file with a stray Latin-1 byte is still right
//!   for the characters around it.
//!
//! [`line_col`] scans the text once per call; [`LineIndex`] remembers where lines start, for a
//! text that reports many positions.

/// 1-based line and character column of byte `offset` in `text`.
pub fn line_col(text: &[u8], offset: usize) -> (usize, usize) {
    let offset = char_start(text, offset);
    let before = &text[..offset];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    (line, columns(&before[line_start..]) + 1)
}

/// Where the lines of one text start, to answer [`LineIndex::line_col`] without a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineIndex {
    line_starts: Vec<usize>,
}

impl LineIndex {
    /// Indexes `text`.
    pub fn new(text: &[u8]) -> Self {
        let line_starts = std::iter::once(0)
            .chain(
                text.iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Self { line_starts }
    }

    /// [`line_col`] of byte `offset` in `text`, which must be the text this index was built
    /// from.
    pub fn line_col(&self, text: &[u8], offset: usize) -> (usize, usize) {
        let offset = char_start(text, offset);
        // `line_starts[0]` is 0 ≤ offset, so the point is at least 1.
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let start = self.line_starts[line];
        (line + 1, columns(&text[start..offset]) + 1)
    }
}

/// `offset`, clamped to the text, moved back to the start of the character it falls in (at
/// most 3 bytes back, as UTF-8 continuation bytes go).
fn char_start(text: &[u8], offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    for _ in 0..3 {
        if offset == 0 || offset == text.len() || !is_continuation(text[offset]) {
            break;
        }
        offset -= 1;
    }
    offset
}

/// Characters in `bytes`, each byte that is not part of a valid character counting as one.
fn columns(bytes: &[u8]) -> usize {
    let mut count = 0;
    for chunk in bytes.utf8_chunks() {
        count += chunk.valid().chars().count() + chunk.invalid().len();
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(text: &[u8], offset: usize) -> (usize, usize) {
        let once = line_col(text, offset);
        assert_eq!(LineIndex::new(text).line_col(text, offset), once);
        once
    }

    #[test]
    fn counts_lines_from_one_and_columns_in_characters() {
        assert_eq!(both(b"abc", 0), (1, 1));
        assert_eq!(both("ab\nçd = 1\n".as_bytes(), 3), (2, 1));
        // 'ç' is two bytes; the 'd' after it is column 2.
        assert_eq!(both("ab\nçd = 1\n".as_bytes(), 5), (2, 2));
        assert_eq!(both("ab\ncdé\nx".as_bytes(), 7), (2, 4));
        assert_eq!(both("ab\ncdé\nx".as_bytes(), 8), (3, 1));
        // Right after a newline: the next line's first column.
        assert_eq!(both(b"a\n", 2), (2, 1));
    }

    #[test]
    fn an_offset_inside_a_character_is_that_character() {
        assert_eq!(both("é".as_bytes(), 1), (1, 1));
        assert_eq!(both("é\néa".as_bytes(), 5), (2, 2));
        assert_eq!(both("a😀b".as_bytes(), 3), (1, 2));
    }

    #[test]
    fn past_the_end_is_the_end() {
        assert_eq!(both(b"ab", 99), (1, 3));
        assert_eq!(both(b"", 5), (1, 1));
    }

    #[test]
    fn each_byte_that_is_not_utf8_is_one_column() {
        assert_eq!(both(b"\xe9\xe9a", 2), (1, 3));
        assert_eq!(both(b"\xff\xfe\nx\xc3", 5), (2, 3));
    }
}
