//! The loading pipeline: a unit's bytes become chunks of validated rows on a blocking thread
//! (the source's reader, `crate::source::reader` for files) while the async loader ([`loader`])
//! streams earlier chunks into PostgreSQL, so reading and writing overlap and memory stays
//! bounded by the chunk channel. [`worker`] is the loop around it that owns batching, retries
//! and shutdown, over any `crate::source::Source`.

pub mod line_size;
pub mod loader;
pub mod worker;
