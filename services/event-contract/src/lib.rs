//! The event contract: the one definition of an e-commerce event and of the CSV layout it travels
//! in. The generator writes with it and the ingestor reads with it, so the two can never disagree
//! about what a valid row is.
//!
//! Parsing follows "parse, don't validate": a raw CSV record either becomes an [`Event`], whose
//! every field is a newtype that cannot hold an invalid value, or a [`Rejection`] carrying a stable
//! machine-readable [`RejectReason`] and a human message naming the field and the offending value.
//!
//! # Layout
//! - [`domain`]: the newtypes ([`EventId`], [`UserId`], [`ProductId`], [`EventType`], [`Price`],
//!   [`EventTimestamp`]) and the [`Event`] they make up.
//! - [`reject`]: [`RejectReason`] codes (a bounded set, safe as metric labels) and [`Rejection`].
//! - [`column`]: the contract's columns, their names and the header line.
//! - [`layout`]: the CSV header, [`HeaderLayout`] (columns matched by name) and
//!   [`parse_record`], the single place a record becomes an event.
//! - [`records`]: [`RecordReader`], which splits bytes into CSV records with their raw text and
//!   a size cap (the memory bound for hostile input).
//! - [`reader`]: [`EventReader`], a streaming reader of a whole CSV file.
//! - [`writer`]: [`EventWriter`], which writes events in the canonical layout.
#![warn(missing_docs)]

pub mod column;
pub mod domain;
pub mod layout;
pub mod reader;
pub mod records;
pub mod reject;
pub mod writer;

pub use column::{Column, COLUMNS, HEADER_LINE};
pub use domain::{
    Event, EventId, EventTimestamp, EventType, Price, ProductId, UserId, ValidationContext,
    DEFAULT_MAX_FUTURE_SKEW,
};
pub use layout::{parse_fields, parse_record, ExtraColumnPolicy, HeaderError, HeaderLayout};
pub use reader::{EventReader, ParsedRow, ReadError, RowRef};
pub use records::{Fields, RawRecord, RecordReader, DEFAULT_MAX_RECORD_BYTES};
pub use reject::{RejectReason, Rejection};
pub use writer::EventWriter;
