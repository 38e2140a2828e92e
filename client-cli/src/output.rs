//! Printing Arrow batches for people and for pipes: a table (arrow's pretty printer), CSV (one
//! header line, then one line per row) or JSON (one object per line), flushed per batch.

use std::io::Write;

use anyhow::Result;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Writes batches as they come; CSV repeats its header only when the schema changes.
pub struct Printer {
    format: Format,
    last_schema: Option<SchemaRef>,
}

impl Printer {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            last_schema: None,
        }
    }

    /// Announces the columns: CSV prints its header line (once per schema).
    pub fn schema(&mut self, schema: &SchemaRef) -> Result<()> {
        if self.last_schema.as_ref() == Some(schema) {
            return Ok(());
        }
        if self.format == Format::Csv {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            w.write(&RecordBatch::new_empty(schema.clone()))?;
            drop(w);
            out.flush()?;
        }
        self.last_schema = Some(schema.clone());
        Ok(())
    }

    pub fn print(&mut self, batch: &RecordBatch) -> Result<()> {
        self.schema(batch.schema_ref())?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        match self.format {
            Format::Table => {
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(std::slice::from_ref(batch))?
                )?;
            }
            Format::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(false)
                    .build(&mut out);
                w.write(batch)?;
            }
            Format::Json => {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
                w.write(batch)?;
                w.finish()?;
            }
        }
        out.flush()?;
        Ok(())
    }

    /// Prints a whole result (a table gets one frame).
    pub fn print_all(&mut self, batches: &[RecordBatch]) -> Result<()> {
        if self.format == Format::Table {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            writeln!(
                out,
                "{}",
                arrow::util::pretty::pretty_format_batches(batches)?
            )?;
            return Ok(out.flush()?);
        }
        for b in batches {
            self.print(b)?;
        }
        Ok(())
    }
}
