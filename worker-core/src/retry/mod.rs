//! Retries: the backoff schedule ([`policy`]) and the attempt bookkeeping that travels in the
//! message's own headers ([`attempts`]).

pub(crate) mod attempts;
pub(crate) mod policy;
