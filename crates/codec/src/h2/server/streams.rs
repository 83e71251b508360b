//! The open streams of a connection, by identifier.
//!
//! A client opens streams in increasing order of identifier, so a vector kept in that order
//! takes each new one at its end and finds any by binary search: no hashing, and nothing a
//! client's choice of identifiers can make slow. At most `max_concurrent_streams` are held.

use super::Stream;

#[derive(Debug, Default)]
pub(super) struct Streams {
    by_id: Vec<(u32, Stream)>,
}

impl Streams {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn position(&self, id: u32) -> Result<usize, usize> {
        self.by_id.binary_search_by_key(&id, |(k, _)| *k)
    }

    pub(super) fn get(&self, id: u32) -> Option<&Stream> {
        self.position(id).ok().map(|i| &self.by_id[i].1)
    }

    pub(super) fn get_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.position(id).ok().map(|i| &mut self.by_id[i].1)
    }

    pub(super) fn contains(&self, id: u32) -> bool {
        self.position(id).is_ok()
    }

    /// Adds a stream. A new identifier is above every one held, so it goes at the end.
    pub(super) fn insert(&mut self, id: u32, stream: Stream) {
        match self.position(id) {
            Ok(i) => self.by_id[i].1 = stream,
            Err(i) => self.by_id.insert(i, (id, stream)),
        }
    }

    pub(super) fn remove(&mut self, id: u32) -> Option<Stream> {
        let i = self.position(id).ok()?;
        Some(self.by_id.remove(i).1)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Stream)> {
        self.by_id.iter().map(|(id, s)| (*id, s))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut Stream)> {
        self.by_id.iter_mut().map(|(id, s)| (*id, s))
    }
}
