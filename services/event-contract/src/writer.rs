//! Writes events in the canonical CSV layout.

use std::fmt::Write as _;
use std::io::Write;

use crate::column::COLUMNS;
use crate::domain::Event;

/// Writes the header, then one line per event, `\n`-terminated, quoting only where needed.
pub struct EventWriter<W: Write> {
    csv: csv::Writer<W>,
    /// Scratch space reused for every formatted field, so writing does not allocate per row.
    scratch: String,
}

impl<W: Write> EventWriter<W> {
    /// Wraps `output` and writes the header line.
    ///
    /// # Errors
    /// When writing the header fails.
    pub fn new(output: W) -> csv::Result<Self> {
        let mut csv = csv::WriterBuilder::new()
            // `write_raw` must be able to write records of the wrong width (fault injection).
            .flexible(true)
            .from_writer(output);
        csv.write_record(COLUMNS.map(|c| c.name()))?;
        Ok(EventWriter {
            csv,
            scratch: String::with_capacity(64),
        })
    }

    /// Writes one event.
    ///
    /// # Errors
    /// When the underlying writer fails.
    pub fn write_event(&mut self, event: &Event) -> csv::Result<()> {
        let mut uuid = [0u8; uuid::fmt::Hyphenated::LENGTH];
        self.csv.write_field(
            event
                .event_id
                .as_uuid()
                .hyphenated()
                .encode_lower(&mut uuid),
        )?;
        self.write_display(event.user_id)?;
        self.write_display(event.product_id)?;
        self.csv.write_field(event.event_type.as_str())?;
        match &event.price {
            Some(price) => self.write_display(price)?,
            None => self.csv.write_field("")?,
        }
        self.write_display(event.event_timestamp)?;
        self.csv.write_record(None::<&[u8]>)
    }

    /// Writes a record of arbitrary raw fields. The generator uses it to inject broken rows;
    /// everything else should use [`EventWriter::write_event`].
    ///
    /// # Errors
    /// When the underlying writer fails.
    pub fn write_raw<I, F>(&mut self, fields: I) -> csv::Result<()>
    where
        I: IntoIterator<Item = F>,
        F: AsRef<[u8]>,
    {
        self.csv.write_record(fields)
    }

    /// Flushes buffered output to the underlying writer.
    ///
    /// # Errors
    /// When the underlying writer fails.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.csv.flush()
    }

    /// Flushes and returns the underlying writer.
    ///
    /// # Errors
    /// When the final flush fails.
    pub fn into_inner(self) -> std::io::Result<W> {
        self.csv.into_inner().map_err(|e| e.into_error())
    }

    fn write_display(&mut self, value: impl std::fmt::Display) -> csv::Result<()> {
        self.scratch.clear();
        // Writing into a String cannot fail.
        let _ = write!(self.scratch, "{value}");
        self.csv.write_field(self.scratch.as_bytes())
    }
}
