//! HPACK decoding (`sluice_codec::h2::hpack::Decoder`) of arbitrary field blocks, several in a
//! row on one decoder, as a client's blocks arrive on one connection.
//!
//! Properties:
//! - never panics, whatever the blocks (the dynamic table included);
//! - the fields of a block that decodes, encoded again by `hpack::encode` and decoded by a
//!   fresh decoder, come back the same (names in lowercase, as the encoder writes them), with
//!   the same never-indexed marks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_codec::h2::hpack::{Decoder, encode};

type Fields = Vec<(Vec<u8>, Vec<u8>, bool)>;

fn decode(decoder: &mut Decoder, block: &[u8]) -> Option<Fields> {
    let mut fields = Vec::new();
    decoder
        .decode(block, |f| fields.push((f.name.to_vec(), f.value.to_vec(), f.sensitive)))
        .ok()?;
    Some(fields)
}

fuzz_target!(|input: (u16, Vec<Vec<u8>>)| {
    let (table_size, blocks) = input;
    let mut decoder = Decoder::new(usize::from(table_size));
    for block in &blocks {
        let Some(fields) = decode(&mut decoder, block) else {
            // After an error the connection ends; so does this run.
            return;
        };
        let mut again = Vec::new();
        for (name, value, sensitive) in &fields {
            encode::field(&mut again, name, value, *sensitive);
        }
        let lowered: Fields = fields
            .into_iter()
            .map(|(n, v, s)| (n.to_ascii_lowercase(), v, s))
            .collect();
        let round_trip = decode(&mut Decoder::new(0), &again).expect("encoded fields decode");
        assert_eq!(round_trip, lowered);
    }
});
