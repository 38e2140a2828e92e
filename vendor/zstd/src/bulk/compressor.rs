use crate::map_error_code;

use std::io;
use zstd_safe;

/// Allows to compress independently multiple chunks of data.
///
/// Each job will be processed entirely in-memory without streaming, so this
/// is most fitting for many small jobs. To compress larger volume that don't
/// easily fit in memory, a streaming compression may be more appropriate.
///
/// It is more efficient than a streaming compressor for 2 reasons:
/// * It re-uses the zstd context between jobs to avoid re-allocations
/// * It avoids copying data from a `Read` into a temporary buffer before compression.
///
/// (Pitwall's copy: the zstd context is made on first use, not by `new`. See
/// `vendor/zstd/PITWALL.md`.)
#[derive(Default)]
pub struct Compressor<'a> {
    /// Made by [`Compressor::ctx`] on first use: a reader that never compresses (parquet-rs
    /// makes a compressor for every column chunk it reads) never pays for a context.
    context: Option<zstd_safe::CCtx<'a>>,
    /// The compression level of `new`/`set_compression_level` while there is no context.
    level: Option<i32>,
}

impl Compressor<'static> {
    /// Creates a new zstd compressor
    pub fn new(level: i32) -> io::Result<Self> {
        Self::with_dictionary(level, &[])
    }

    /// Creates a new zstd compressor, using the given dictionary.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn with_dictionary(level: i32, dictionary: &[u8]) -> io::Result<Self> {
        let mut compressor = Self::default();

        compressor.set_dictionary(level, dictionary)?;

        Ok(compressor)
    }
}

impl<'a> Compressor<'a> {
    /// The context, made (with the level set before) on first use.
    fn ctx(&mut self) -> io::Result<&mut zstd_safe::CCtx<'a>> {
        if self.context.is_none() {
            let mut context = zstd_safe::CCtx::default();
            if let Some(level) = self.level.take() {
                context
                    .set_parameter(zstd_safe::CParameter::CompressionLevel(
                        level,
                    ))
                    .map_err(map_error_code)?;
            }
            self.context = Some(context);
        }
        Ok(self.context.as_mut().expect("made above"))
    }
}

impl<'a> Compressor<'a> {
    /// Creates a new compressor using an existing `EncoderDictionary`.
    ///
    /// The compression level will be the one specified when creating the dictionary.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn with_prepared_dictionary<'b>(
        dictionary: &'a crate::dict::EncoderDictionary<'b>,
    ) -> io::Result<Self>
    where
        'b: 'a,
    {
        let mut compressor = Self::default();

        compressor.set_prepared_dictionary(dictionary)?;

        Ok(compressor)
    }

    /// Changes the compression level used by this compressor.
    ///
    /// *This will clear any dictionary previously registered.*
    ///
    /// If you want to keep the existing dictionary, you will need to pass it again to
    /// `Self::set_dictionary` instead of using this method.
    pub fn set_compression_level(&mut self, level: i32) -> io::Result<()> {
        self.set_dictionary(level, &[])
    }

    /// Changes the dictionary and compression level used by this compressor.
    ///
    /// Will affect future compression jobs.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn set_dictionary(
        &mut self,
        level: i32,
        dictionary: &[u8],
    ) -> io::Result<()> {
        if dictionary.is_empty() && self.context.is_none() {
            // What the context would do on first use: set the level, load no dictionary.
            self.level = Some(level);
            return Ok(());
        }
        let context = self.ctx()?;
        context
            .set_parameter(zstd_safe::CParameter::CompressionLevel(level))
            .map_err(map_error_code)?;

        context
            .load_dictionary(dictionary)
            .map_err(map_error_code)?;

        Ok(())
    }

    /// Changes the dictionary used by this compressor.
    ///
    /// The compression level used when preparing the dictionary will be used.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn set_prepared_dictionary<'b>(
        &mut self,
        dictionary: &'a crate::dict::EncoderDictionary<'b>,
    ) -> io::Result<()>
    where
        'b: 'a,
    {
        self.ctx()?
            .ref_cdict(dictionary.as_cdict())
            .map_err(map_error_code)?;

        Ok(())
    }

    /// Compress a single block of data to the given destination buffer.
    ///
    /// Returns the number of bytes written, or an error if something happened
    /// (for instance if the destination buffer was too small). A failed job
    /// is abandoned, and the compressor can be set up again for the next one.
    /// With worker threads (see `multithread`), abandoning a job waits for
    /// them to be done with it.
    ///
    /// A level of `0` uses zstd's default (currently `3`).
    pub fn compress_to_buffer<C: zstd_safe::WriteBuf + ?Sized>(
        &mut self,
        source: &[u8],
        destination: &mut C,
    ) -> io::Result<usize> {
        let context = self.ctx()?;
        let result = context.compress2(destination, source);
        if result.is_err() {
            // `compress2` leaves a failed frame open, and zstd refuses most
            // setters mid-frame. Abandon it, so the compressor can be set up
            // for the next job. Resetting only the session cannot fail (it
            // waits for the worker threads, if any).
            let _ = context.reset(zstd_safe::ResetDirective::SessionOnly);
        }
        result.map_err(map_error_code)
    }

    /// Compresses a block of data and returns the compressed result.
    ///
    /// A level of `0` uses zstd's default (currently `3`).
    pub fn compress(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        // We allocate a big buffer, slightly larger than the input data.
        let buffer_len = zstd_safe::compress_bound(data.len());
        let mut buffer = Vec::with_capacity(buffer_len);

        self.compress_to_buffer(data, &mut buffer)?;

        // Should we shrink the vec? Meh, let the user do it if he wants.
        Ok(buffer)
    }

    /// Gives mutable access to the internal context.
    ///
    /// (Makes the context if there is none yet; panics if zstd cannot set
    /// the level given before, which `new` would have reported.)
    pub fn context_mut(&mut self) -> &mut zstd_safe::CCtx<'a> {
        self.ctx().expect("zstd accepts the compression level")
    }

    /// Sets a compression parameter for this compressor.
    pub fn set_parameter(
        &mut self,
        parameter: zstd_safe::CParameter,
    ) -> io::Result<()> {
        self.ctx()?
            .set_parameter(parameter)
            .map_err(map_error_code)?;
        Ok(())
    }

    /// Sets the expected size of the input.
    ///
    /// This affects the compression effectiveness.
    ///
    /// It is an error to give an incorrect size (an error will be returned when closing the
    /// stream if the size does not match what was pledged).
    ///
    /// Giving a `None` size means the size is unknown (this is the default).
    pub fn set_pledged_src_size(
        &mut self,
        size: Option<u64>,
    ) -> io::Result<()> {
        self.ctx()?
            .set_pledged_src_size(size)
            .map_err(map_error_code)?;
        Ok(())
    }

    crate::encoder_parameters!();
}

fn _assert_traits() {
    fn _assert_send<T: Send>(_: T) {}

    _assert_send(Compressor::new(0));
}

#[cfg(test)]
mod lazy_context_tests {
    use super::Compressor;

    const DATA: &[u8] = b"telemetry telemetry telemetry telemetry 0123456789 0123456789";

    /// `ZSTD_compress` at `level` with a context of its own (not through `Compressor`).
    fn eager(level: i32) -> Vec<u8> {
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(DATA.len()));
        zstd_safe::compress(&mut out, DATA, level).unwrap();
        out
    }

    #[test]
    fn new_makes_no_context() {
        // What a reader that never compresses (parquet-rs, per column chunk) pays for.
        let compressor = Compressor::new(3).unwrap();
        assert!(compressor.context.is_none());
        let compressor = Compressor::default();
        assert!(compressor.context.is_none());
    }

    #[test]
    fn the_first_compression_makes_it_with_the_level_of_new() {
        for level in [1, 3, 19] {
            let mut lazy = Compressor::new(level).unwrap();
            let compressed = lazy.compress(DATA).unwrap();
            assert!(lazy.context.is_some());
            // The same bytes as zstd's own one-shot compression at that level.
            assert_eq!(compressed, eager(level));
            assert_eq!(crate::bulk::decompress(&compressed, DATA.len()).unwrap(), DATA);
        }
    }

    #[test]
    fn a_level_set_before_the_context_exists_is_kept() {
        let mut compressor = Compressor::new(1).unwrap();
        compressor.set_compression_level(19).unwrap();
        assert!(compressor.context.is_none());
        let compressed = compressor.compress(DATA).unwrap();
        assert_eq!(compressed, eager(19));
    }
}
