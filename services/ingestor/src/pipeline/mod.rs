//! The loading pipeline: a file's bytes become chunks of validated rows on a blocking thread
//! ([`reader`]) while the async loader ([`loader`]) streams earlier chunks into PostgreSQL, so
//! reading and writing overlap and memory stays bounded by the chunk channel. [`worker`] is the
//! loop around it that owns batching, retries and shutdown.

pub mod loader;
pub mod reader;
pub mod worker;
