//! Parallel, reproducible gzip for the published extract files (`SMKIKR_FULL_YYYY-MM-DD.xml.gz`,
//! up to 16 GB).
//!
//! pigz splits one deflate stream into blocks and primes each with the previous block's last
//! 32 KiB, which needs sync flushes and dictionary handling the flate2 API does not make
//! simple. This module takes the simpler route: the output is a sequence of *independent*
//! RFC 1952 gzip members, which every gzip reader (gzip, zcat, pigz, Python's `gzip`,
//! flate2's `MultiGzDecoder`) concatenates transparently. With 4 MiB members the lost
//! cross-member matches cost well under 0.1 % in size, and the member index
//! ([`GzStats::member_index`]) allows decompressing any member on its own.
//!
//! # Determinism
//!
//! A replay of the same extract on any machine, with any thread count and any pattern of
//! `write()` calls, must produce the same bytes (the files are hashed and compared). So:
//!
//! * **Content-defined member boundaries.** The input is cut every [`GzOptions::chunk_size`]
//!   bytes of *content* (the last member holds the remainder). Boundaries never depend on
//!   thread count, `write()` sizes or [`Write::flush`] calls (flush does not end a member).
//!   Empty input still produces one (empty) member, so the file is always valid gzip.
//! * **Fixed header.** Every member starts with the same 10 bytes: `1f 8b 08`, FLG = 0 (no
//!   FNAME, FCOMMENT, FEXTRA, FHCRC), MTIME = 0 (the time of writing would differ on every
//!   replay; RFC 1952 defines 0 as "no time stamp"), XFL from the level as gzip and pigz set
//!   it (2 for level 9, 4 for level 1, else 0; fixed for a given level) and OS =
//!   [`GZIP_OS_UNKNOWN`] (255) rather than the build platform's code.
//! * **Deterministic deflate.** Each member is one raw deflate stream produced by a single
//!   `Compress` call sequence whose output-buffer sizes depend only on the chunk length
//!   (this matters for level 0, whose stored-block sizes follow the output space). A
//!   compressor is reset between members, so which worker compresses which chunk cannot
//!   matter. The bytes do depend on the deflate implementation and version (zlib-rs via
//!   flate2, pinned by `Cargo.lock`); the `golden_output_is_pinned` test catches a change.
//!   zlib-rs's SIMD code paths change speed, not bytes (the golden hash is the same with
//!   flate2's `runtime_detection` feature on and off).
//!
//! # Pipeline and memory bound
//!
//! The writing thread copies input into a chunk buffer; each full chunk becomes a job for a
//! pool of `threads` workers, each owning one reusable compressor. Results come back over a
//! channel, possibly out of order, are reordered by sequence number and written to the inner
//! writer strictly in order, on the writing thread. Input and output buffers are returned
//! with the result and reused (a free list owned by the writing thread), so after warm-up
//! the pipeline allocates nothing.
//!
//! At most [`IN_FLIGHT_PER_THREAD`] × `threads` chunks are submitted-but-not-yet-written;
//! when that many are outstanding the writing thread blocks until the oldest is written.
//! Memory is therefore bounded by about `2 × threads + 1` input buffers plus
//! `2 × threads` output buffers of `chunk_size` each (≈ 37 MiB for 2 threads and 4 MiB
//! chunks), whatever the input size: a 16 GB extract streams. The only thing that grows
//! with the input is [`GzStats::member_index`], 40 bytes per member (≈ 160 KiB for 16 GB
//! in 4 MiB members).
//!
//! With `threads == 1` chunks are compressed inline on the writing thread (no threads, no
//! channels); the output is identical.
//!
//! # Failure
//!
//! A worker error (or panic) or an error from the inner writer is returned as `io::Error`
//! from `write`, `flush` or `finish`; the workers are then stopped and every later call fails
//! with the same kind of error. Dropping the writer without [`ParallelGzWriter::finish`]
//! cancels queued jobs and joins the workers (waiting at most for the chunks being
//! compressed); it does not write the buffered tail. Because every member is a complete
//! gzip file, a *truncated* output is still valid gzip of a prefix of the input: publish
//! only after `finish` succeeded (write to a temporary name and rename).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Default member size: 4 MiB of input per gzip member. Large enough that restarting the
/// dictionary costs well under 0.1 % of compression ratio and per-member overhead (18 bytes,
/// one job) is negligible; small enough that a 2-thread pipeline holds ~37 MiB.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;

/// Default deflate level, the same as gzip's and pigz's default.
pub const DEFAULT_LEVEL: u32 = 6;

/// Largest accepted `chunk_size` (1 GiB): keeps ISIZE (input size mod 2^32) exact and the
/// memory bound sane.
pub const MAX_CHUNK_SIZE: usize = 1 << 30;

/// OS byte written in every member header: 255, "unknown" in RFC 1952, so the file does not
/// depend on the platform that wrote it.
pub const GZIP_OS_UNKNOWN: u8 = 255;

/// Chunks each worker may have submitted-but-not-yet-written: one being compressed and one
/// queued, so a worker never waits for the writing thread to cut the next chunk.
pub const IN_FLIGHT_PER_THREAD: usize = 2;

/// Settings of a [`ParallelGzWriter`]. `chunk_size` and `level` determine the output bytes;
/// `threads` only determines the speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GzOptions {
    /// Input bytes per gzip member (1 ..= [`MAX_CHUNK_SIZE`]); default [`DEFAULT_CHUNK_SIZE`].
    pub chunk_size: usize,
    /// Deflate level 0 ..= 9; default [`DEFAULT_LEVEL`].
    pub level: u32,
    /// Compression threads, at least 1 (1 = compress inline on the writing thread); default
    /// the machine's available parallelism.
    pub threads: usize,
}

impl Default for GzOptions {
    fn default() -> Self {
        GzOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: DEFAULT_LEVEL,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl GzOptions {
    /// Refuse settings that cannot work, before any thread is started.
    fn validate(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return bad(format!(
                "gzip chunk_size {} out of range 1..={MAX_CHUNK_SIZE}",
                self.chunk_size
            ));
        }
        if self.level > 9 {
            return bad(format!("gzip level {} out of range 0..=9", self.level));
        }
        if self.threads == 0 {
            return bad("gzip threads must be at least 1".to_string());
        }
        Ok(())
    }
}

/// Where one gzip member sits in the output and which input it holds: enough for a manifest
/// or for random access to the extract (decompress one member without reading the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GzMember {
    /// Offset of the member's first header byte in the output.
    pub offset: u64,
    /// Length of the member in the output: header, deflate data and trailer.
    pub compressed_len: u64,
    /// Offset of the member's first byte in the uncompressed input.
    pub input_offset: u64,
    /// Uncompressed length (also the member's ISIZE).
    pub input_len: u64,
    /// CRC-32 of the member's uncompressed bytes (also in its trailer).
    pub crc32: u32,
}

/// What [`ParallelGzWriter::finish`] reports: the totals a manifest or a metric needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GzStats {
    /// Uncompressed bytes written into the writer.
    pub input_bytes: u64,
    /// Compressed bytes written to the inner writer.
    pub output_bytes: u64,
    /// Number of gzip members (at least 1).
    pub members: u64,
    /// Every member, in output order.
    pub member_index: Vec<GzMember>,
}

/// The 10-byte header shared by every member for `level` (see the module doc).
fn member_header(level: u32) -> [u8; 10] {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, GZIP_OS_UNKNOWN]
}

/// Upper bound of a raw deflate stream of `n` bytes with default window and memLevel (zlib's
/// `deflateBound`, plus slack). Only a function of `n`, so it also fixes the output space
/// given to the compressor.
fn deflate_bound(n: usize) -> usize {
    n + (n >> 12) + (n >> 14) + (n >> 25) + 13 + 64
}

/// Compress `input` as one complete gzip member into `out[..returned len]`, using (and
/// resetting) `comp`, a raw-deflate compressor. `out` is grown as needed and never shrunk, so
/// a reused buffer is zeroed only once. Returns the member length and the input's CRC-32.
fn compress_member(
    comp: &mut Compress,
    header: &[u8; 10],
    input: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<(usize, u32)> {
    #[cfg(test)]
    if input.starts_with(tests::PANIC_MARKER) {
        panic!("injected compression panic (test)");
    }
    let mut limit = header.len() + deflate_bound(input.len());
    if out.len() < limit + 8 {
        out.resize(limit + 8, 0);
    }
    out[..header.len()].copy_from_slice(header);
    comp.reset();
    let mut pos = header.len();
    let mut consumed = 0usize;
    loop {
        let (in_before, out_before) = (comp.total_in(), comp.total_out());
        let status = comp
            .compress(
                &input[consumed..],
                &mut out[pos..limit],
                FlushCompress::Finish,
            )
            .map_err(|e| io::Error::other(format!("deflate failed: {e}")))?;
        let (used_in, used_out) = (
            (comp.total_in() - in_before) as usize,
            (comp.total_out() - out_before) as usize,
        );
        consumed += used_in;
        pos += used_out;
        match status {
            Status::StreamEnd => break,
            _ if pos == limit => {
                // Out of space (not expected with deflate_bound). Grow by a fixed step, so the
                // sequence of output spaces, hence the bytes, still depends only on the input.
                limit += 64 << 10;
                if out.len() < limit + 8 {
                    out.resize(limit + 8, 0);
                }
            }
            _ if used_in == 0 && used_out == 0 => {
                return Err(io::Error::other("deflate made no progress"));
            }
            _ => {}
        }
    }
    let mut crc = Crc::new();
    crc.update(input);
    let crc = crc.sum();
    out[pos..pos + 4].copy_from_slice(&crc.to_le_bytes());
    out[pos + 4..pos + 8].copy_from_slice(&(input.len() as u32).to_le_bytes());
    Ok((pos + 8, crc))
}

/// [`compress_member`] with a panic turned into an error, so that no caller is left waiting
/// for a reply and `write` never panics; the compressor (state unknown) is then discarded.
/// `comp` is created on first use.
fn compress_caught(
    comp: &mut Option<Compress>,
    level: u32,
    header: &[u8; 10],
    input: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<(usize, u32)> {
    catch_unwind(AssertUnwindSafe(|| {
        let c = comp.get_or_insert_with(|| Compress::new(Compression::new(level), false));
        compress_member(c, header, input, out)
    }))
    .unwrap_or_else(|_| {
        *comp = None;
        Err(io::Error::other("gzip compression panicked"))
    })
}

/// A chunk to compress; `output` is a (reused) buffer to compress into.
struct Job {
    seq: u64,
    input: Vec<u8>,
    output: Vec<u8>,
}

/// A compressed chunk: `output[..len]` is the member; both buffers come back for reuse.
struct Done {
    seq: u64,
    input: Vec<u8>,
    output: Vec<u8>,
    result: io::Result<(usize, u32)>,
}

/// The worker threads and their channels. Dropping it cancels queued jobs and joins the
/// workers; they never block on anything but the job queue, so this cannot hang.
struct Pool {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    cancel: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    max_in_flight: u64,
}

impl Pool {
    fn start(opts: &GzOptions, header: [u8; 10], id: u64) -> io::Result<Pool> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut pool = Pool {
            jobs: Some(job_tx),
            done: done_rx,
            cancel: Arc::new(AtomicBool::new(false)),
            workers: Vec::with_capacity(opts.threads),
            max_in_flight: (IN_FLIGHT_PER_THREAD * opts.threads) as u64,
        };
        for i in 0..opts.threads {
            let (jobs, done, cancel) = (job_rx.clone(), done_tx.clone(), pool.cancel.clone());
            let level = opts.level;
            // On failure, dropping `pool` stops the workers already started.
            let handle = std::thread::Builder::new()
                .name(format!("gz{id}-{i}"))
                .spawn(move || worker(&jobs, &done, &cancel, &header, level))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.jobs = None;
        for handle in self.workers.drain(..) {
            // Workers catch panics around compression; nothing else in them can panic.
            let _ = handle.join();
        }
    }
}

/// A worker: compress jobs until the job queue is closed. Every job taken gets a reply (a
/// panic in compression becomes an error result), so the writing thread never waits forever.
fn worker(
    jobs: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
    cancel: &AtomicBool,
    header: &[u8; 10],
    level: u32,
) {
    let mut comp: Option<Compress> = None;
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Job {
            seq,
            input,
            mut output,
        }) = job
        else {
            return;
        };
        if cancel.load(Ordering::Relaxed) {
            continue; // abandoned: drain the queue without compressing
        }
        let result = compress_caught(&mut comp, level, header, &input, &mut output);
        if done
            .send(Done {
                seq,
                input,
                output,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

/// How chunks get compressed.
enum Engine {
    /// `threads == 1`: on the writing thread.
    Inline(Option<Compress>),
    /// `threads >= 2`: on a worker pool.
    Pool(Pool),
    /// After a failure: nothing runs any more.
    Stopped,
}

/// Source of the per-writer number in worker thread names (`gz<id>-<i>`).
static NEXT_WRITER_ID: AtomicU64 = AtomicU64::new(0);

/// Streaming gzip writer for the extract files: compresses in parallel into independent gzip
/// members cut every `chunk_size` input bytes, with output identical whatever the thread
/// count (see the module doc). Call [`finish`](Self::finish) to write the last member and get
/// the inner writer and the member index back.
pub struct ParallelGzWriter<W: Write> {
    inner: W,
    opts: GzOptions,
    header: [u8; 10],
    /// The chunk being filled (capacity `chunk_size`).
    cur: Vec<u8>,
    free_inputs: Vec<Vec<u8>>,
    free_outputs: Vec<Vec<u8>>,
    engine: Engine,
    /// Sequence number of the next chunk to submit.
    next_seq: u64,
    /// Sequence number of the next chunk to write to `inner`.
    next_write: u64,
    /// Compressed chunks waiting for their predecessors.
    pending: BTreeMap<u64, Done>,
    stats: GzStats,
    /// Set by the first error: kind and message, repeated by every later call.
    failed: Option<(io::ErrorKind, String)>,
    #[cfg_attr(not(test), allow(dead_code))]
    id: u64,
}

impl<W: Write> ParallelGzWriter<W> {
    /// Start a writer into `inner` with `opts`; fails on invalid options or if a worker thread
    /// cannot be spawned.
    pub fn new(inner: W, opts: GzOptions) -> io::Result<Self> {
        opts.validate()?;
        let header = member_header(opts.level);
        let id = NEXT_WRITER_ID.fetch_add(1, Ordering::Relaxed);
        let engine = if opts.threads == 1 {
            Engine::Inline(None)
        } else {
            Engine::Pool(Pool::start(&opts, header, id)?)
        };
        Ok(ParallelGzWriter {
            inner,
            opts,
            header,
            cur: Vec::with_capacity(opts.chunk_size),
            free_inputs: Vec::new(),
            free_outputs: Vec::new(),
            engine,
            next_seq: 0,
            next_write: 0,
            pending: BTreeMap::new(),
            stats: GzStats::default(),
            failed: None,
            id,
        })
    }

    /// The inner writer, e.g. to look at how much has been written so far.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Compress the buffered tail as the last member (an empty member if nothing was written
    /// at all), write every member, flush the inner writer and stop the workers. Returns the
    /// inner writer and the stats; any compression or I/O error is returned instead.
    pub fn finish(mut self) -> io::Result<(W, GzStats)> {
        if let Err(e) = self.finish_inner() {
            return Err(self.fail(e));
        }
        let ParallelGzWriter {
            inner,
            mut stats,
            engine,
            ..
        } = self;
        drop(engine); // joins the (idle) workers
        stats.members = stats.member_index.len() as u64;
        Ok((inner, stats))
    }

    fn finish_inner(&mut self) -> io::Result<()> {
        self.check()?;
        if !self.cur.is_empty() || self.next_seq == 0 {
            self.submit()?;
        }
        self.reap(0)?;
        self.inner.flush()
    }

    /// The error to return if an earlier call failed.
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some((kind, msg)) => Err(io::Error::new(
                *kind,
                format!("gzip writer failed earlier: {msg}"),
            )),
        }
    }

    /// Record the first failure, stop the workers and drop buffered data; returns `e`.
    fn fail(&mut self, e: io::Error) -> io::Error {
        if self.failed.is_none() {
            self.failed = Some((e.kind(), e.to_string()));
        }
        self.engine = Engine::Stopped;
        self.pending.clear();
        self.free_inputs = Vec::new();
        self.free_outputs = Vec::new();
        self.cur = Vec::new();
        e
    }

    /// Hand the current chunk to the engine (inline: compress and write it now).
    fn submit(&mut self) -> io::Result<()> {
        let seq = self.next_seq;
        match &mut self.engine {
            Engine::Inline(comp) => {
                let mut output = self.free_outputs.pop().unwrap_or_default();
                let result =
                    compress_caught(comp, self.opts.level, &self.header, &self.cur, &mut output);
                let input = std::mem::take(&mut self.cur);
                self.next_seq += 1;
                self.pending.insert(
                    seq,
                    Done {
                        seq,
                        input,
                        output,
                        result,
                    },
                );
                self.write_ready()?;
            }
            Engine::Pool(pool) => {
                let limit = pool.max_in_flight - 1;
                self.reap(limit)?;
                let Engine::Pool(pool) = &self.engine else {
                    return Err(io::Error::other("gzip writer stopped"));
                };
                let output = self.free_outputs.pop().unwrap_or_default();
                let input = std::mem::take(&mut self.cur);
                let job = Job { seq, input, output };
                pool.jobs
                    .as_ref()
                    .and_then(|jobs| jobs.send(job).ok())
                    .ok_or_else(|| io::Error::other("gzip compression workers have exited"))?;
                self.next_seq += 1;
            }
            Engine::Stopped => return Err(io::Error::other("gzip writer stopped")),
        }
        self.cur = self
            .free_inputs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.opts.chunk_size));
        Ok(())
    }

    /// Collect finished chunks and write those next in order, blocking until at most `limit`
    /// chunks are submitted-but-unwritten.
    fn reap(&mut self, limit: u64) -> io::Result<()> {
        loop {
            if let Engine::Pool(pool) = &self.engine {
                while let Ok(done) = pool.done.try_recv() {
                    self.pending.insert(done.seq, done);
                }
            }
            self.write_ready()?;
            if self.next_seq - self.next_write <= limit {
                return Ok(());
            }
            let Engine::Pool(pool) = &self.engine else {
                return Err(io::Error::other("gzip writer lost chunks")); // unreachable
            };
            let done = pool
                .done
                .recv()
                .map_err(|_| io::Error::other("gzip compression workers have exited"))?;
            self.pending.insert(done.seq, done);
        }
    }

    /// Write the compressed chunks that are next in order to the inner writer.
    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(Done {
            input,
            output,
            result,
            ..
        }) = self.pending.remove(&self.next_write)
        {
            let (len, crc32) = result?;
            self.inner.write_all(&output[..len])?;
            let input_offset = self
                .stats
                .member_index
                .last()
                .map_or(0, |m| m.input_offset + m.input_len);
            self.stats.member_index.push(GzMember {
                offset: self.stats.output_bytes,
                compressed_len: len as u64,
                input_offset,
                input_len: input.len() as u64,
                crc32,
            });
            self.stats.output_bytes += len as u64;
            self.next_write += 1;
            let mut input = input;
            input.clear();
            self.free_inputs.push(input);
            self.free_outputs.push(output);
        }
        Ok(())
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    /// Buffer `buf` (always all of it), submitting each chunk as it fills.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        let mut rest = buf;
        while !rest.is_empty() {
            let n = (self.opts.chunk_size - self.cur.len()).min(rest.len());
            self.cur.extend_from_slice(&rest[..n]);
            self.stats.input_bytes += n as u64;
            rest = &rest[n..];
            if self.cur.len() == self.opts.chunk_size {
                if let Err(e) = self.submit() {
                    return Err(self.fail(e));
                }
            }
        }
        Ok(buf.len())
    }

    /// Write every chunk already submitted and flush the inner writer. The partial chunk
    /// being filled stays buffered: ending a member here would make the bytes depend on
    /// when flush was called.
    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        match self.reap(0).and_then(|()| self.inner.flush()) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// Compress `data` in one go, as [`ParallelGzWriter`] would: for tests, benchmarks and small
/// files.
///
/// # Panics
/// On invalid settings (`chunk_size` 0 or above [`MAX_CHUNK_SIZE`], `level` above 9,
/// `threads` 0) or if threads cannot be spawned.
pub fn compress_to_vec(data: &[u8], chunk_size: usize, level: u32, threads: usize) -> Vec<u8> {
    let out = Vec::with_capacity(deflate_bound(data.len()) / 2 + 64);
    let opts = GzOptions {
        chunk_size,
        level,
        threads,
    };
    let mut w = ParallelGzWriter::new(out, opts).expect("valid gzip options");
    w.write_all(data).expect("writing to a Vec cannot fail");
    w.finish().expect("writing to a Vec cannot fail").0
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use sha2::{Digest, Sha256};
    use std::io::Read;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::{Duration, Instant};

    /// A chunk starting with this makes compression panic (test builds only).
    pub(super) const PANIC_MARKER: &[u8] = b"\0injected-panic\0";

    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;

    /// xorshift64*: deterministic, dependency-free test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    /// Semi-compressible XML shaped like an SMKI extract: repeated tags, varying numbers and
    /// identifiers, and a base64 certificate body per record.
    fn xmlish(len: usize, seed: u64) -> Vec<u8> {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const STATUS: [&str; 4] = ["In use", "Pending", "Revoked", "Expired"];
        const ROLE: [&str; 5] = [
            "DeviceDS",
            "DeviceKA",
            "OrgDS",
            "OrgKA",
            "AccessControlBroker",
        ];
        let mut rng = Rng(seed | 1);
        let mut out = Vec::with_capacity(len + 2 * KIB);
        out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<SMKIRepository>\n");
        let mut serial = 0x4000_0000_0000u64;
        while out.len() < len {
            let r = rng.next();
            serial += 1 + (r & 0xff);
            let eui = rng.next();
            write!(
                out,
                "  <Certificate>\n    <SerialNumber>{serial:032X}</SerialNumber>\n    \
                 <SubjectUniqueID>{:02X}-{:02X}-{:02X}-FF-FE-{:02X}-{:02X}-{:02X}</SubjectUniqueID>\n    \
                 <Role>{}</Role>\n    <Status>{}</Status>\n    \
                 <NotBefore>2024-{:02}-{:02}T{:02}:{:02}:00Z</NotBefore>\n    <Data>",
                eui as u8,
                (eui >> 8) as u8,
                (eui >> 16) as u8,
                (eui >> 24) as u8,
                (eui >> 32) as u8,
                (eui >> 40) as u8,
                ROLE[(r >> 8) as usize % ROLE.len()],
                STATUS[(r >> 16) as usize % STATUS.len()],
                1 + (r >> 20) % 12,
                1 + (r >> 24) % 28,
                (r >> 32) % 24,
                (r >> 40) % 60,
            )
            .unwrap();
            // The certificate body: a fixed-ish prefix (same CA, same algorithms) then noise.
            out.extend_from_slice(b"MIIBzjCCAXWgAwIBAgIQ");
            for _ in 0..(360 + (r >> 48) % 200) {
                out.push(B64[(rng.next() >> 58) as usize]);
            }
            out.extend_from_slice(b"</Data>\n  </Certificate>\n");
        }
        out.truncate(len);
        out
    }

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed | 1);
        (0..len).map(|_| (rng.next() >> 56) as u8).collect()
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        MultiGzDecoder::new(gz)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    fn compress_with_writes(
        data: &[u8],
        opts: GzOptions,
        sizes: &mut dyn FnMut() -> usize,
    ) -> (Vec<u8>, GzStats) {
        let mut w = ParallelGzWriter::new(Vec::new(), opts).unwrap();
        let mut rest = data;
        while !rest.is_empty() {
            let n = sizes().clamp(1, rest.len());
            w.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        w.finish().unwrap()
    }

    /// Run `f` on a thread; fail the test if it takes longer than `secs` (a hang).
    fn with_timeout<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => panic!("hung for more than {secs} s"),
            Err(RecvTimeoutError::Disconnected) => panic!("the test thread panicked"),
        }
    }

    /// Walk the members of `gz` with an independent parser (flate2's single-member decoder,
    /// which stops at the end of a member), returning (offset, length, uncompressed bytes).
    fn walk_members(gz: &[u8]) -> Vec<(usize, usize, Vec<u8>)> {
        let mut members = Vec::new();
        let mut offset = 0;
        while offset < gz.len() {
            let mut rest = &gz[offset..];
            let mut content = Vec::new();
            flate2::bufread::GzDecoder::new(&mut rest)
                .read_to_end(&mut content)
                .unwrap();
            let len = gz.len() - offset - rest.len();
            members.push((offset, len, content));
            offset += len;
        }
        members
    }

    fn tool(name: &str) -> String {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "{name} is not installed: run scripts/setup, which installs it"
        );
        name.to_string()
    }

    fn run_stdout(cmd: &str, args: &[&str], path: &Path) -> Vec<u8> {
        let out = Command::new(cmd)
            .args(args)
            .arg(path)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    const PY_GUNZIP: &str =
        "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(open(sys.argv[1], 'rb').read()))";

    /// gzip -t, pigz -t, zcat and Python's gzip all accept `gz` and yield `data`.
    fn check_with_external_readers(gz: &[u8], data: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("SMKIKR_FULL_2025-01-01.xml.gz");
        std::fs::write(&path, gz).unwrap();
        run_stdout(&tool("gzip"), &["-t"], &path);
        run_stdout(&tool("pigz"), &["-t"], &path);
        assert!(
            run_stdout(&tool("zcat"), &[], &path) == data,
            "zcat content differs"
        );
        let py = run_stdout(&tool("python3"), &["-c", PY_GUNZIP], &path);
        assert!(py == data, "python gzip.decompress content differs");
    }

    #[test]
    fn identical_output_for_any_thread_count_and_write_pattern() {
        let data = xmlish(10 * MIB + 12_345, 1);
        let chunk_size = 64 * KIB;
        let reference = compress_to_vec(&data, chunk_size, DEFAULT_LEVEL, 1);
        assert_eq!(gunzip(&reference), data);
        for threads in [1, 2, 4] {
            let opts = GzOptions {
                chunk_size,
                level: DEFAULT_LEVEL,
                threads,
            };
            let whole = compress_to_vec(&data, chunk_size, DEFAULT_LEVEL, threads);
            assert!(
                whole == reference,
                "threads {threads}, one write: output differs"
            );
            let (one_byte, _) = compress_with_writes(&data, opts, &mut || 1);
            assert!(
                one_byte == reference,
                "threads {threads}, 1-byte writes: output differs"
            );
            let mut rng = Rng(threads as u64 * 77 + 5);
            let (random, stats) = compress_with_writes(&data, opts, &mut || match rng.next() % 4 {
                0 => (rng.next() % 16) as usize,
                1 => (rng.next() % (3 * chunk_size as u64)) as usize,
                _ => (rng.next() % 5000) as usize,
            });
            assert!(
                random == reference,
                "threads {threads}, random writes: output differs"
            );
            assert_eq!(stats.members, data.len().div_ceil(chunk_size) as u64);
        }
    }

    #[test]
    fn identical_output_at_other_levels_and_on_incompressible_data() {
        let data = random_bytes(3 * MIB + 7, 9);
        let text = xmlish(2 * MIB, 4);
        for level in [0, 1, 9] {
            for input in [&data, &text] {
                let reference = compress_to_vec(input, 256 * KIB, level, 1);
                assert_eq!(&gunzip(&reference), input, "level {level}");
                for threads in [2, 3] {
                    let out = compress_to_vec(input, 256 * KIB, level, threads);
                    assert!(
                        out == reference,
                        "level {level}, threads {threads}: output differs"
                    );
                }
            }
        }
    }

    /// Replays must produce the same bytes across machines and releases: if this fails, the
    /// deflate implementation (zlib-rs / flate2 version) or this module changed its output,
    /// and re-published extracts would no longer hash the same as the originals.
    #[test]
    fn golden_output_is_pinned() {
        let data = xmlish(MIB + 1, 42);
        let out = compress_to_vec(&data, 128 * KIB, DEFAULT_LEVEL, 2);
        assert_eq!(
            hex::encode(Sha256::digest(&out)),
            "17a5fbea008bf1aad8a34532920ff1535e6556b0a6fdc9ea15bce0b42677dad4",
            "gzip output changed (deflate implementation or version?)"
        );
    }

    #[test]
    fn round_trips_and_member_index_matches_the_file() {
        let data = xmlish(3 * MIB + 100, 2);
        let chunk_size = 100_000;
        let opts = GzOptions {
            chunk_size,
            level: DEFAULT_LEVEL,
            threads: 3,
        };
        let mut w = ParallelGzWriter::new(Vec::new(), opts).unwrap();
        w.write_all(&data).unwrap();
        w.flush().unwrap(); // must not cut a member
        let (gz, stats) = w.finish().unwrap();
        assert_eq!(gunzip(&gz), data);
        assert_eq!(stats.input_bytes, data.len() as u64);
        assert_eq!(stats.output_bytes, gz.len() as u64);
        assert_eq!(stats.members, data.len().div_ceil(chunk_size) as u64);
        assert_eq!(stats.member_index.len() as u64, stats.members);

        let walked = walk_members(&gz);
        assert_eq!(walked.len(), stats.member_index.len());
        for (m, (offset, len, content)) in stats.member_index.iter().zip(&walked) {
            assert_eq!((m.offset, m.compressed_len), (*offset as u64, *len as u64));
            let (start, end) = (
                m.input_offset as usize,
                (m.input_offset + m.input_len) as usize,
            );
            assert_eq!(&content[..], &data[start..end]);
            assert!(m.input_len == chunk_size as u64 || end == data.len());
            let member = &gz[*offset..*offset + *len];
            // Fixed header: magic, deflate, FLG 0, MTIME 0, XFL 0 (level 6), OS 255.
            assert_eq!(&member[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
            assert_eq!(&member[4..8], &[0, 0, 0, 0], "MTIME must be zero");
            let trailer = &member[len - 8..];
            assert_eq!(trailer[..4], m.crc32.to_le_bytes());
            assert_eq!(trailer[4..], (m.input_len as u32).to_le_bytes());
            let mut crc = Crc::new();
            crc.update(content);
            assert_eq!(crc.sum(), m.crc32);
        }
    }

    #[test]
    fn header_matches_gzip_conventions_per_level() {
        assert_eq!(member_header(1), [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255]);
        assert_eq!(member_header(6), [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        assert_eq!(member_header(9), [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
        // flate2's own GzBuilder agrees for these levels (so do gzip and pigz).
        for level in [1, 6, 9] {
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), Compression::new(level));
            e.write_all(b"x").unwrap();
            assert_eq!(e.finish().unwrap()[..10], member_header(level));
        }
    }

    #[test]
    fn external_readers_accept_the_output() {
        let data = xmlish(10 * MIB, 3);
        let gz = compress_to_vec(&data, 64 * KIB, DEFAULT_LEVEL, 2);
        check_with_external_readers(&gz, &data);
    }

    #[test]
    fn empty_input_is_one_empty_member() {
        for threads in [1, 2] {
            let (gz, stats) = ParallelGzWriter::new(
                Vec::new(),
                GzOptions {
                    threads,
                    ..Default::default()
                },
            )
            .unwrap()
            .finish()
            .unwrap();
            assert_eq!(stats.members, 1);
            assert_eq!(stats.input_bytes, 0);
            assert_eq!(gz.len(), 20);
            assert_eq!(
                gz,
                compress_to_vec(&[], DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL, 1)
            );
            assert!(gunzip(&gz).is_empty());
            check_with_external_readers(&gz, &[]);
        }
    }

    #[test]
    fn exact_multiple_of_chunk_size_has_no_trailing_empty_member() {
        let data = xmlish(3 * 64 * KIB, 5);
        for threads in [1, 2] {
            let mut w = ParallelGzWriter::new(
                Vec::new(),
                GzOptions {
                    chunk_size: 64 * KIB,
                    level: 6,
                    threads,
                },
            )
            .unwrap();
            w.write_all(&data).unwrap();
            let (gz, stats) = w.finish().unwrap();
            assert_eq!(stats.members, 3);
            assert_eq!(gunzip(&gz), data);
        }
    }

    #[test]
    fn invalid_options_are_refused() {
        for opts in [
            GzOptions {
                chunk_size: 0,
                level: 6,
                threads: 1,
            },
            GzOptions {
                chunk_size: MAX_CHUNK_SIZE + 1,
                level: 6,
                threads: 1,
            },
            GzOptions {
                chunk_size: 1,
                level: 10,
                threads: 1,
            },
            GzOptions {
                chunk_size: 1,
                level: 6,
                threads: 0,
            },
        ] {
            let e = ParallelGzWriter::new(Vec::new(), opts)
                .err()
                .expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{opts:?}");
        }
    }

    /// A writer that accepts `limit` bytes, then fails like a full disk.
    struct FailAfter {
        limit: usize,
        written: usize,
    }
    impl Write for FailAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.written >= self.limit {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "disk full (test)",
                ));
            }
            let n = buf.len().min(self.limit - self.written);
            self.written += n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn inner_writer_error_surfaces_without_hanging() {
        let data = Arc::new(xmlish(8 * MIB, 6));
        for threads in [1, 2, 4] {
            for limit in [0, 1000, 300 * KIB] {
                let data = data.clone();
                let err = with_timeout(60, move || {
                    let opts = GzOptions {
                        chunk_size: 64 * KIB,
                        level: 6,
                        threads,
                    };
                    let mut w =
                        ParallelGzWriter::new(FailAfter { limit, written: 0 }, opts).unwrap();
                    // Errors surface from write (pipeline full) or at the latest from finish.
                    let mut first_err = None;
                    for piece in data.chunks(100 * KIB) {
                        if let Err(e) = w.write_all(piece) {
                            first_err = Some(e);
                            break;
                        }
                    }
                    match first_err {
                        Some(e) => {
                            // Every later call fails too, and finish does not hang.
                            assert!(w.write_all(b"more").is_err());
                            assert!(w.flush().is_err());
                            assert!(w.finish().is_err());
                            e
                        }
                        None => w.finish().err().expect("finish must fail"),
                    }
                });
                assert_eq!(
                    err.kind(),
                    io::ErrorKind::StorageFull,
                    "threads {threads}, limit {limit}"
                );
                assert!(err.to_string().contains("disk full"), "{err}");
            }
        }
    }

    #[test]
    fn compression_panic_surfaces_as_error_without_hanging() {
        for threads in [1, 2, 4] {
            let err = with_timeout(60, move || {
                let chunk_size = 64 * KIB;
                let opts = GzOptions {
                    chunk_size,
                    level: 6,
                    threads,
                };
                let mut w = ParallelGzWriter::new(Vec::new(), opts).unwrap();
                let good = xmlish(3 * chunk_size, 10);
                let mut bad = PANIC_MARKER.to_vec();
                bad.resize(chunk_size, b'x');
                let mut result = w.write_all(&good).and_then(|()| w.write_all(&bad));
                for _ in 0..20 {
                    result = result.and_then(|()| w.write_all(&good));
                }
                match result {
                    Err(e) => {
                        assert!(w.finish().is_err(), "finish after a failure must fail");
                        e
                    }
                    Ok(()) => w.finish().expect_err("finish must fail"),
                }
            });
            assert!(
                err.to_string().contains("panicked"),
                "threads {threads}: {err}"
            );
        }
    }

    /// Names of this process's threads (Linux).
    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|s| s.trim().to_string())
            .collect()
    }

    #[test]
    fn drop_without_finish_stops_the_workers() {
        let data = xmlish(6 * MIB, 7);
        let names = with_timeout(60, move || {
            let opts = GzOptions {
                chunk_size: 256 * KIB,
                level: 9,
                threads: 4,
            };
            let mut w = ParallelGzWriter::new(Vec::new(), opts).unwrap();
            let prefix = format!("gz{}-", w.id);
            // A thread names itself when it starts: give them a moment.
            let started = Instant::now();
            while thread_names()
                .iter()
                .filter(|n| n.starts_with(&prefix))
                .count()
                < 4
            {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "workers did not start"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            w.write_all(&data).unwrap(); // jobs still queued and running
            drop(w);
            thread_names()
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
                .collect::<Vec<_>>()
        });
        assert!(names.is_empty(), "worker threads left running: {names:?}");
    }

    #[test]
    fn worker_pool_is_bounded() {
        // The pipeline never holds more than 2 x threads chunks, whatever the input size:
        // count the buffers the writer ever allocated.
        let data = xmlish(4 * MIB, 8);
        let opts = GzOptions {
            chunk_size: 32 * KIB,
            level: 1,
            threads: 2,
        };
        let mut w = ParallelGzWriter::new(io::sink(), opts).unwrap();
        let mut max_buffers = 0;
        for piece in data.chunks(10 * KIB) {
            w.write_all(piece).unwrap();
            let in_flight = (w.next_seq - w.next_write) as usize;
            assert!(in_flight <= IN_FLIGHT_PER_THREAD * 2);
            // buffers owned by the writer = free + pending + in the workers' hands
            max_buffers = max_buffers.max(w.free_inputs.len() + in_flight + 1);
        }
        assert!(max_buffers <= IN_FLIGHT_PER_THREAD * 2 + 1, "{max_buffers}");
        w.finish().unwrap();
    }

    /// CPU seconds (user + system) used so far by this process (`who` = RUSAGE_SELF) or by its
    /// waited-for children (RUSAGE_CHILDREN): a measure that other load on the machine does
    /// not distort.
    fn cpu_secs(who: libc::c_int) -> f64 {
        // SAFETY: getrusage only writes the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(who, &mut u) }, 0);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    }

    /// Throughput against pigz on the same bytes. Run with
    /// `cargo test --release --lib extract::gzip -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput_vs_pigz() {
        let mb = std::env::var("GZ_BENCH_MB")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let data = xmlish(mb * MIB, 11);
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("extract.xml");
        std::fs::write(&input, &data).unwrap();
        let mbs = |secs: f64| data.len() as f64 / MIB as f64 / secs;

        let mut ours = Vec::new();
        for threads in [1, 2] {
            let out = std::fs::File::create(dir.path().join(format!("ours{threads}.gz"))).unwrap();
            let (t, cpu) = (Instant::now(), cpu_secs(libc::RUSAGE_SELF));
            let opts = GzOptions {
                chunk_size: DEFAULT_CHUNK_SIZE,
                level: DEFAULT_LEVEL,
                threads,
            };
            let mut w = ParallelGzWriter::new(out, opts).unwrap();
            w.write_all(&data).unwrap();
            let (_, stats) = w.finish().unwrap();
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_secs(libc::RUSAGE_SELF) - cpu;
            println!(
                "ours  threads {threads}: {secs:6.2} s  {:7.1} MB/s  cpu {cpu:6.2} s ({:5.1} MB/cpu-s)  ratio {:.4}  {} members",
                mbs(secs),
                mbs(cpu),
                stats.output_bytes as f64 / data.len() as f64,
                stats.members
            );
            ours.push((secs, stats.output_bytes));
        }

        let mut pigz = Vec::new();
        for threads in ["1", "2"] {
            let out_path = dir.path().join(format!("pigz{threads}.gz"));
            let (t, cpu) = (Instant::now(), cpu_secs(libc::RUSAGE_CHILDREN));
            let status = Command::new(tool("pigz"))
                .args(["-p", threads, "-6", "-c"])
                .arg(&input)
                .stdout(std::fs::File::create(&out_path).unwrap())
                .status()
                .unwrap();
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_secs(libc::RUSAGE_CHILDREN) - cpu;
            assert!(status.success());
            let size = std::fs::metadata(&out_path).unwrap().len();
            println!(
                "pigz  -p {threads}     : {secs:6.2} s  {:7.1} MB/s  cpu {cpu:6.2} s ({:5.1} MB/cpu-s)  ratio {:.4}",
                mbs(secs),
                mbs(cpu),
                size as f64 / data.len() as f64
            );
            pigz.push(secs);
        }
        println!(
            "speed ours/pigz: 1 thread {:.2}x, 2 threads {:.2}x  (size ours/pigz at 2: {:.4})",
            pigz[0] / ours[0].0,
            pigz[1] / ours[1].0,
            ours[1].1 as f64
                / std::fs::metadata(dir.path().join("pigz2.gz"))
                    .unwrap()
                    .len() as f64
        );
        let ours2 = std::fs::read(dir.path().join("ours2.gz")).unwrap();
        assert!(gunzip(&ours2) == data);
    }
}
