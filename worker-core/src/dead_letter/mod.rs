//! Dead letters: the record published to `<handler>.dlq` (DESIGN.md §5).

pub(crate) mod record;
