//! Logging through tracing-subscriber: human-readable by default, JSON lines with `[log] format =
//! "json"` or `--log-format json`. `RUST_LOG` overrides the configured level.
//!
//! Log lines (one access line per request) go into a buffer that a background thread writes to
//! stderr every [`FLUSH_EVERY`] or once [`WAKE_AT`] bytes are waiting, so a request never waits on
//! a `write` of its own: under load many lines leave in one write, and when the gateway is idle a
//! line appears within that interval.
//! Nothing is dropped: a buffer past [`MAX_BUFFER`] (stderr not keeping up) is written by the
//! logging thread itself, which slows it down instead.
//!
//! Traces ([`traces`]) go through the same subscriber, as a layer of their own, when
//! `[telemetry]` names a collector ([`init_for`]).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::{FilterExt, Targets, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{LogFormat, Settings, TraceSettings};

pub(crate) mod server_timing;
pub(crate) mod span;
mod traces;

pub(crate) use traces::{SPANS_DROPPED, TRACE_TARGET, decided, on as traces_on, sample_hit};

const FLUSH_EVERY: Duration = Duration::from_millis(10);
const MAX_BUFFER: usize = 8 * 1024 * 1024;
/// Past this much, the writer thread is woken at once: smaller writes, steadier latency.
const WAKE_AT: usize = 32 * 1024;

#[derive(Default)]
struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    closed: Mutex<bool>,
}

/// The writer every log line goes through.
#[derive(Clone, Default)]
pub(crate) struct BufferedStderr(Arc<Shared>);

impl Write for BufferedStderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.append(line)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BufferedStderr {
    /// Adds whole lines to the buffer; the writer thread sends them out.
    pub(crate) fn append(&self, line: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.0.buf.lock().unwrap_or_else(PoisonError::into_inner);
        let before = buf.len();
        buf.extend_from_slice(line);
        if before < WAKE_AT && buf.len() >= WAKE_AT {
            self.0.wake.notify_one();
        }
        if buf.len() > MAX_BUFFER {
            let full = std::mem::take(&mut *buf);
            drop(buf);
            std::io::stderr().write_all(&full)?;
        }
        Ok(line.len())
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = BufferedStderr;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl BufferedStderr {
    /// Writes out what is buffered. The buffer is swapped with `spare`, an empty one that kept its
    /// capacity, so that the loggers' buffer does not grow again from nothing after every write.
    fn write_out(&self, spare: &mut Vec<u8>) {
        spare.clear();
        std::mem::swap(
            &mut *self.0.buf.lock().unwrap_or_else(PoisonError::into_inner),
            spare,
        );
        if !spare.is_empty() {
            let _ = std::io::stderr().write_all(spare);
        }
        // What a burst grew is not kept for good.
        if spare.capacity() > WAKE_AT * 4 {
            *spare = Vec::new();
        }
    }
}

/// Where access lines go: the subscriber's own buffer, written in the same format, but formatted
/// by [`crate::layers::access_log`] directly, since `tracing`'s formatter cost a quarter of a
/// cache hit's instructions.
pub(crate) struct AccessSink {
    pub(crate) writer: BufferedStderr,
    pub(crate) format: LogFormat,
    /// Whether the filter lets access lines through, asked once: at start, and again when a
    /// reload changes the level ([`set_level`]).
    pub(crate) enabled: std::sync::atomic::AtomicBool,
}

/// The target of access lines (`RUST_LOG=finovy_gateway::access=off` drops them).
pub(crate) const ACCESS_TARGET: &str = "finovy_gateway::access";

static ACCESS_SINK: OnceLock<AccessSink> = OnceLock::new();

/// The filter of this process's subscriber, swapped by a reload of `[log] level`; unset when
/// `RUST_LOG` decides (it wins over the file) or another subscriber was installed first.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Applies a new `[log] level` (a reload). Without effect when `RUST_LOG` is set.
pub(crate) fn set_level(level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    let Some(handle) = LEVEL.get() else {
        return Ok(());
    };
    handle.reload(filter).map_err(|e| e.to_string())?;
    if let Some(sink) = ACCESS_SINK.get() {
        let on = EnvFilter::try_new(level).is_ok_and(access_on);
        sink.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
    }
    span::set_redis_spans(EnvFilter::try_new(level).is_ok_and(redis_spans_on));
    Ok(())
}

/// The access-line sink, once [`init`] installed this process's subscriber.
pub(crate) fn access_sink() -> Option<&'static AccessSink> {
    ACCESS_SINK.get()
}

/// Writes what is buffered when dropped; keep it for as long as the program logs.
pub struct LogGuard {
    writer: BufferedStderr,
    thread: Option<JoinHandle<()>>,
    /// The trace exporter, when on: its last spans are sent before the log's last lines.
    traces: Option<SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(p) = self.traces.take() {
            let _ = p.shutdown();
        }
        *self
            .writer
            .0
            .closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.writer.0.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.writer.write_out(&mut Vec::new());
    }
}

fn spawn_flusher(writer: BufferedStderr) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut spare = Vec::new();
            loop {
                let closed = writer
                    .0
                    .closed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let (closed, _) = writer
                    .0
                    .wake
                    .wait_timeout(closed, FLUSH_EVERY)
                    .unwrap_or_else(PoisonError::into_inner);
                let done = *closed;
                drop(closed);
                writer.write_out(&mut spare);
                if done {
                    return;
                }
            }
        })
        .expect("spawn the log writer thread")
}

/// Logging alone (the simulator, `dev`, `check-config`).
pub fn init(format: LogFormat, level: &str) -> LogGuard {
    init_with(format, level, None)
}

/// Logging, and traces when the settings name a collector (`[telemetry]`).
pub fn init_for(settings: &Settings) -> LogGuard {
    init_with(
        settings.log.format,
        &settings.log.level,
        settings.traces.as_ref(),
    )
}

/// The filter the log lines go through: `RUST_LOG`, else the configured level, else `info`.
fn active_filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Whether `filter` lets access lines through. Asked of the filter alone, in a subscriber of its
/// own: the process's subscriber filters per layer (the log lines, the trace spans), and
/// `enabled!` there answers for every layer together.
fn access_on(filter: EnvFilter) -> bool {
    let probe = tracing::Dispatch::new(tracing_subscriber::registry().with(filter));
    tracing::dispatcher::with_default(
        &probe,
        || tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO),
    )
}

/// Whether `filter` enables debug for the fleet's module, which asks for Redis spans
/// ([`span::redis`]); asked as [`access_on`] is.
fn redis_spans_on(filter: EnvFilter) -> bool {
    let probe = tracing::Dispatch::new(tracing_subscriber::registry().with(filter));
    tracing::dispatcher::with_default(
        &probe,
        || tracing::enabled!(target: span::REDIS_SPANS_TARGET, tracing::Level::DEBUG),
    )
}

fn init_with(format: LogFormat, level: &str, traces: Option<&TraceSettings>) -> LogGuard {
    let fixed =
        std::env::var_os("RUST_LOG").is_some_and(|_| EnvFilter::try_from_default_env().is_ok());
    let filter = active_filter(level);
    let (filter, handle) = reload::Layer::new(filter);
    let writer = BufferedStderr::default();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer.clone())
        // Colour codes only for a person at a terminal, never in files or collectors.
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    // Each layer filters for itself: the log lines by the level, and never the trace spans; the
    // exporter takes the trace spans alone.
    // One filter, not two nested: a nested one is not asked by `enabled!`.
    let fmt = fmt.with_filter(filter.and(filter_fn(|m| m.target() != TRACE_TARGET)));
    let provider = traces.and_then(|t| match traces::provider(t) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("traces are off: the exporter did not start: {e}");
            None
        }
    });
    let otel = provider.as_ref().map(|p| {
        traces::layer(p).with_filter(Targets::new().with_target(TRACE_TARGET, Level::TRACE))
    });
    // A second init (several servers in one process) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if installed.is_ok() {
        if !fixed {
            let _ = LEVEL.set(handle);
        }
        let _ = ACCESS_SINK.set(AccessSink {
            writer: writer.clone(),
            format,
            enabled: access_on(active_filter(level)).into(),
        });
        span::set_redis_spans(redis_spans_on(active_filter(level)));
    }
    let thread = Some(spawn_flusher(writer.clone()));
    LogGuard {
        writer,
        thread,
        traces: provider,
    }
}
