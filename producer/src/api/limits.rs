//! Cheap counts of the jobs in a batch body, so that a batch over `api.max_batch_jobs`
//! is refused before its jobs are built (a 10 MiB body of short lines is millions of
//! jobs and gigabytes). Both stop counting one past the cap.

use std::cell::Cell;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{IgnoredAny, SeqAccess, Visitor};

/// Non-blank lines (what `parse_batch` turns into jobs), up to `cap + 1`.
pub fn count_lines(bytes: &[u8], cap: usize) -> usize {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .take(cap.saturating_add(1))
        .count()
}

/// Items of a JSON array, up to `cap + 1`; what could be counted before a syntax error
/// (which the parser then reports).
pub fn count_array_items(bytes: &[u8], cap: usize) -> usize {
    let seen = Cell::new(0);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let _ = de.deserialize_seq(Counter { seen: &seen, cap });
    seen.get()
}

struct Counter<'a> {
    seen: &'a Cell<usize>,
    cap: usize,
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {
            self.seen.set(self.seen.get() + 1);
            if self.seen.get() > self.cap {
                return Err(serde::de::Error::custom("over the cap"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_as_the_parser_reads_them() {
        assert_eq!(count_lines(b"a\n\n  \r\nb\r\n{\"query\": \"c\"}", 10), 3);
        assert_eq!(count_lines(b"", 10), 0);
        assert_eq!(
            count_lines(&b"q\n".repeat(1000), 5),
            6,
            "stops past the cap"
        );
    }

    #[test]
    fn array_items_are_counted_without_building_them() {
        assert_eq!(
            count_array_items(br#"[{"query": "a"}, {"query": "b"}]"#, 10),
            2
        );
        assert_eq!(count_array_items(b"[]", 10), 0);
        assert_eq!(count_array_items(br#"{"query": "a"}"#, 10), 0);
        assert_eq!(count_array_items(br#"[1, 2, 3, {"#, 10), 3);
        let big = format!("[{}1]", "1,".repeat(1000));
        assert_eq!(
            count_array_items(big.as_bytes(), 5),
            6,
            "stops past the cap"
        );
    }
}
