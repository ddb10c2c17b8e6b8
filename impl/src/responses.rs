//! The status code of every response the spec declares, read from it at build
//! time (see `build.rs`): the one source for the HTTP status and `meta.code` of
//! everything this service sends, and for the statuses `/metrics` counts.

include!(concat!(env!("OUT_DIR"), "/responses.rs"));
