//! The UDP source: an EA F1 game (F1 23, 24, 25) sends its telemetry straight to the server
//! (`--udp 0.0.0.0:20777`), no broker in between. Each datagram is decoded
//! ([`pitwall_proto::f1udp`]); the packets of a frame become a telemetry row per car
//! ([`pitwall_proto::f1udp::Frames`]) and go to the engine as a micro-batch as soon as a frame
//! completes (with whatever else had arrived), on the same path as Kafka's.
//!
//! A datagram that is not a packet Pitwall reads (too short or long, another format, an
//! unknown packet id, a session time that is not one) is counted by reason and dead-lettered
//! with its bytes, like a bad Kafka message. Frames lost, datagrams that came twice and packets
//! that came too late ([`pitwall_proto::f1udp::FrameCounts`]) are counted with them
//! (`udp_frame_lost`, `udp_duplicate`, `udp_late`), without dead letters: there are no bytes
//! to keep, or they were kept once.
//!
//! UDP has no offsets: the source numbers datagrams (topic `udp`, partition 0, going on after
//! a restart from the checkpoint's number), and what was in flight when the server stopped is
//! lost, as the game does not resend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use pitwall_proto::f1udp::{self, Frames};
use pitwall_proto::schema::{col, telemetry_schema};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::dead_letter::DeadLetter;
use super::decode::RawMessage;
use super::{IngestStats, MicroBatch, PartitionSlice};
use crate::error::{Error, Result};

/// The topic name the UDP source's rows and dead letters are recorded under.
pub(crate) const TOPIC: &str = "udp";

/// A datagram buffer larger than any packet of the specification (the longest is 1460 bytes):
/// a longer datagram is read whole enough to be refused as oversize.
const DATAGRAM_BUFFER: usize = 4096;

/// The receive buffer asked for: half a second of a 22-car grid at 60 Hz is about 0.5 MB, and
/// the kernel's default (about 208 kB) overflows while the process is busy elsewhere. The
/// kernel caps it at `net.core.rmem_max`.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Binds the socket (port 0 = any free port): a bad address fails at start, in one line.
pub(crate) async fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let fail = |e: std::io::Error| Error::Config(format!("--udp {addr}: {e}"));
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    if let Err(e) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
        tracing::warn!(error = %e, "--udp: the receive buffer stays at the system's default");
    }
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    tracing::debug!(bytes = got, "UDP receive buffer");
    UdpSocket::from_std(socket.into()).map_err(fail)
}

/// What the source has gathered since its last micro-batch.
struct Pending {
    rows: Vec<RecordBatch>,
    dead_letters: Vec<DeadLetter>,
    first_offset: Option<i64>,
    next_offset: i64,
}

impl Pending {
    /// Decodes one datagram into rows (when it completes a frame) or a dead letter.
    fn take(&mut self, frames: &mut Frames, datagram: &[u8], stats: &IngestStats) {
        let offset = self.next_offset;
        self.next_offset += 1;
        self.first_offset.get_or_insert(offset);
        let arrival_ms = now_ms();
        let refused = |reason: &'static str, error: String| {
            let m = RawMessage {
                payload: datagram,
                key: None,
                partition: 0,
                offset,
                timestamp_ms: Some(arrival_ms),
                format_header: None,
            };
            DeadLetter::new(TOPIC, &m, reason, error)
        };
        match f1udp::decode(datagram) {
            Ok((header, packet)) => match frames.push(&header, packet, arrival_ms) {
                Ok(Some(rows)) if rows.num_rows() > 0 => self.rows.push(rows),
                Ok(_) => {}
                Err(e) => {
                    stats.add_bad("udp_rows", 1);
                    self.dead_letters.push(refused("udp_rows", e.to_string()));
                }
            },
            Err(e) => {
                stats.add_bad(e.reason(), 1);
                self.dead_letters.push(refused(e.reason(), e.to_string()));
            }
        }
    }

    /// The micro-batch of what was gathered, if anything was.
    fn batch(&mut self) -> Result<Option<MicroBatch>> {
        let Some(first_offset) = self.first_offset.take() else {
            return Ok(None);
        };
        let rows = concat_batches(&telemetry_schema(), &std::mem::take(&mut self.rows))?;
        let max_ts = (rows.num_rows() > 0)
            .then(|| {
                let ts = rows.column_by_name(col::TS).expect("ts");
                datafusion::arrow::compute::max(
                    ts.as_any()
                        .downcast_ref::<datafusion::arrow::array::TimestampMillisecondArray>()
                        .expect("ts type"),
                )
            })
            .flatten();
        Ok(Some(MicroBatch {
            topic: TOPIC.into(),
            rows,
            partitions: vec![PartitionSlice {
                partition: 0,
                first_offset,
                last_offset: self.next_offset - 1,
                max_ts,
                drivers: Vec::new(),
            }],
            assigned: None,
            caught_up: vec![0],
            caught_up_confirmed: None,
            dead_letters: std::mem::take(&mut self.dead_letters),
            ready_at: Instant::now(),
            handover: None,
        }))
    }
}

/// Frames lost, datagrams repeated and packets late (see [`f1udp::FrameCounts`]), counted by
/// reason with the refused datagrams.
fn count_frames(frames: &mut Frames, stats: &IngestStats) {
    let c = frames.take_counts();
    for (reason, n) in [
        ("udp_frame_lost", c.lost),
        ("udp_duplicate", c.duplicates),
        ("udp_late", c.late),
    ] {
        if n > 0 {
            stats.add_bad(reason, n);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Receives datagrams until the engine's channel closes. Rows go on as soon as a frame
/// completes, with everything that had arrived by then (read first, up to `max_rows`): one
/// frame at the game's pace, larger batches when the engine is busy and datagrams queue up.
/// Every `tick` the frames that waited long enough settle, and refusals without rows go on.
pub(crate) async fn run(
    socket: UdpSocket,
    start_offset: i64,
    tick: Duration,
    max_rows: usize,
    stats: Arc<IngestStats>,
    tx: mpsc::Sender<MicroBatch>,
) -> Result<()> {
    let addr = socket.local_addr()?;
    tracing::info!(%addr, "listening for F1 game telemetry (UDP)");
    let mut frames = Frames::default();
    let mut pending = Pending {
        rows: Vec::new(),
        dead_letters: Vec::new(),
        first_offset: None,
        next_offset: start_offset,
    };
    let mut buf = vec![0u8; DATAGRAM_BUFFER];
    let mut ticker = tokio::time::interval(tick);
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (mut n, _) = received?;
                loop {
                    pending.take(&mut frames, &buf[..n], &stats);
                    datagrams += 1;
                    bytes += n as u64;
                    let rows: usize = pending.rows.iter().map(RecordBatch::num_rows).sum();
                    if rows >= max_rows {
                        break;
                    }
                    match socket.try_recv_from(&mut buf) {
                        Ok((more, _)) => n = more,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                if pending.rows.is_empty() {
                    continue;
                }
            }
            _ = ticker.tick() => {
                frames.settle(now_ms());
                count_frames(&mut frames, &stats);
            }
        }
        if let Some(batch) = pending.batch()? {
            stats.count(datagrams, bytes, batch.rows.num_rows() as u64);
            (datagrams, bytes) = (0, 0);
            if tx.send(batch).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod fuzz;
