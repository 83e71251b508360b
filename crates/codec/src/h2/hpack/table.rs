//! HPACK's two tables (RFC 7541 §2.3): the static one, the same for everyone, and the dynamic
//! one a peer's encoder fills and this side's decoder keeps in step with.

use std::collections::VecDeque;

use super::HpackError;

/// SETTINGS_HEADER_TABLE_SIZE until a peer says otherwise (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// RFC 7541 Appendix A; index 1 is the first entry.
pub(crate) const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// What an entry costs beyond its bytes (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// One dynamic entry: name and value in one allocation.
#[derive(Debug)]
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// The dynamic table, newest entry first.
#[derive(Debug)]
pub(crate) struct Dynamic {
    entries: VecDeque<Entry>,
    size: usize,
    /// The size the peer's encoder chose (by a size update), at most `allowed`.
    max: usize,
    /// The most this side allows (its SETTINGS_HEADER_TABLE_SIZE).
    allowed: usize,
}

impl Dynamic {
    pub(crate) fn new(allowed: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max: allowed,
            allowed,
        }
    }

    /// The name and value at `index` (1-based, across both tables).
    pub(crate) fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if let Some(&(name, value)) = index.checked_sub(1).and_then(|i| STATIC.get(i)) {
            return Ok((name, value));
        }
        let entry = index
            .checked_sub(STATIC.len() + 1)
            .and_then(|i| self.entries.get(i))
            .ok_or(HpackError::BadIndex(index))?;
        Ok(entry.bytes.split_at(entry.name_len))
    }

    /// Adds a field (`field` holds its name, `name_len` bytes, then its value), evicting the
    /// oldest entries to make room (RFC 7541 §4.4). A field larger than the whole table empties
    /// it and is not added.
    pub(crate) fn insert(&mut self, field: Vec<u8>, name_len: usize) {
        let needed = field.len() + ENTRY_OVERHEAD;
        if needed > self.max {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - needed);
        self.entries.push_front(Entry {
            bytes: field.into_boxed_slice(),
            name_len,
        });
        self.size += needed;
    }

    /// The peer's encoder changes the table's size (RFC 7541 §6.3).
    pub(crate) fn resize(&mut self, max: usize) -> Result<(), HpackError> {
        if max > self.allowed {
            return Err(HpackError::TableSizeTooLarge(max));
        }
        self.max = max;
        self.evict_to(max);
        Ok(())
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            let Some(oldest) = self.entries.pop_back() else {
                break;
            };
            self.size -= oldest.size();
        }
    }

    #[cfg(test)]
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(t: &mut Dynamic, name: &[u8], value: &[u8]) {
        t.insert([name, value].concat(), name.len());
    }

    #[test]
    fn indexes_run_through_the_static_table_into_the_dynamic_one() {
        let mut t = Dynamic::new(DEFAULT_TABLE_SIZE);
        assert_eq!(t.get(2).unwrap(), (&b":method"[..], &b"GET"[..]));
        assert_eq!(t.get(61).unwrap().0, b"www-authenticate");
        assert_eq!(t.get(0), Err(HpackError::BadIndex(0)));
        assert_eq!(t.get(62), Err(HpackError::BadIndex(62)));
        add(&mut t, b"a", b"1");
        add(&mut t, b"b", b"2");
        assert_eq!(t.get(62).unwrap(), (&b"b"[..], &b"2"[..]));
        assert_eq!(t.get(63).unwrap(), (&b"a"[..], &b"1"[..]));
        assert_eq!(t.size(), 2 * 34);
    }

    #[test]
    fn the_oldest_entries_make_room_and_an_oversized_one_empties_the_table() {
        let mut t = Dynamic::new(100);
        add(&mut t, b"aaaa", b"1111"); // 40
        add(&mut t, b"bbbb", b"2222"); // 80
        add(&mut t, b"cccc", b"3333"); // evicts aaaa
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(63).unwrap().0, b"bbbb");
        add(&mut t, &[b'x'; 70], b"too big");
        assert_eq!((t.len(), t.size()), (0, 0));
        assert_eq!(t.resize(101), Err(HpackError::TableSizeTooLarge(101)));
        add(&mut t, b"dddd", b"4444");
        t.resize(39).unwrap();
        assert_eq!(t.len(), 0);
    }
}
