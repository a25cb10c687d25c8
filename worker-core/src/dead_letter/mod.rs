//! Dead letters: the record published to `<handler>.dlq` (`docs/contracts.md` §5).

pub(crate) mod record;
pub(crate) mod store;
