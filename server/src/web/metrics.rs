//! `GET /metrics`: the server's counters in the Prometheus text format (OpenMetrics 1.0, which
//! Prometheus scrapes as it is), encoded by the `prometheus-client` crate from the same
//! counters `pitwall stats` reads. Every scrape reads them afresh: nothing is kept here.
//!
//! The names, with their labels (README "Metrics" lists the same):
//! ingest `pitwall_ingest_{messages,rows,bytes,micro_batches}_total`,
//! `pitwall_dead_letters_total{reason}`, `pitwall_late_rows_total`,
//! `pitwall_consumer_lag{partition}`, `pitwall_partitions_assigned`,
//! `pitwall_unassigned_seconds`, `pitwall_group_rejoins_total` (Kafka input only); engine `pitwall_watermark_delay_seconds`,
//! `pitwall_query_rows_out_total{query}`, `pitwall_query_late_rows_dropped_total{query}`,
//! `pitwall_query_state_rows{query}`, `pitwall_query_emit_latency_seconds{query,quantile}`;
//! subscribers `pitwall_subscribers{kind}`, `pitwall_subscribers_dropped_total{kind}` (kind
//! `flight` or `dashboard`); archive `pitwall_archive_rows_total`,
//! `pitwall_archive_checkpoints_total`, `pitwall_archive_failures_total`,
//! `pitwall_archive_dead_letters_cut_total`,
//! `pitwall_archive_commit_age_seconds`; process `pitwall_resident_memory_bytes`,
//! `pitwall_uptime_seconds`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use super::{HttpError, WebState};

type Labels = Vec<(String, String)>;

/// One scrape's registry, filled from the current counters.
struct Scrape(Registry);

impl Scrape {
    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.0.register(name, help, ConstCounter::new(v));
    }
    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.0.register(name, help, ConstGauge::new(v));
    }
    fn counters(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Counter>::default();
        for (labels, v) in values {
            family.get_or_create(&labels).inc_by(v);
        }
        self.0.register(name, help, family);
    }
    fn gauges(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, f64)>) {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (labels, v) in values {
            family.get_or_create(&labels).set(v);
        }
        self.0.register(name, help, family);
    }
}

fn label(k: &str, v: impl ToString) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// `GET /metrics`.
pub(crate) async fn scrape(
    State(state): State<Arc<WebState>>,
) -> Result<impl IntoResponse, HttpError> {
    let mut s = Scrape(Registry::default());
    ingest(&mut s, &state);
    engine(&mut s, &state).await?;
    archive_and_process(&mut s, &state);
    let mut text = String::new();
    encode(&mut text, &s.0)
        .map_err(|e| HttpError(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

fn ingest(s: &mut Scrape, state: &WebState) {
    let i = &state.flight.ingest;
    s.counter(
        "pitwall_ingest_messages",
        "Messages consumed.",
        i.messages.load(Ordering::Relaxed),
    );
    s.counter(
        "pitwall_ingest_rows",
        "Telemetry rows decoded.",
        i.rows.load(Ordering::Relaxed),
    );
    s.counter(
        "pitwall_ingest_bytes",
        "Payload bytes consumed.",
        i.bytes.load(Ordering::Relaxed),
    );
    s.counter(
        "pitwall_ingest_micro_batches",
        "Micro-batches handed to the engine",
        i.micro_batches.load(Ordering::Relaxed),
    );
    s.counters(
        "pitwall_dead_letters",
        "Messages that could not be decoded, by reason",
        i.bad_by_reason()
            .into_iter()
            .map(|(r, n)| (label("reason", r), n)),
    );
    let group = i.group();
    if group.kafka {
        s.gauge(
            "pitwall_partitions_assigned",
            "Partitions of the topic this instance owns now",
            group.assigned.len() as f64,
        );
        s.gauge(
            "pitwall_unassigned_seconds",
            "How long this instance has owned no partition (0 while it owns some)",
            group
                .unassigned_since
                .map_or(0.0, |t| t.elapsed().as_secs_f64()),
        );
        s.counter(
            "pitwall_group_rejoins",
            "Times the consumer left and rejoined its group after owning nothing for too long",
            group.rejoins,
        );
    }
    s.gauges(
        "pitwall_consumer_lag",
        "Messages behind the end of each owned partition (librdkafka statistics)",
        i.lag_by_partition()
            .into_iter()
            .map(|(p, lag)| (label("partition", p), lag as f64)),
    );
}

async fn engine(s: &mut Scrape, state: &WebState) -> Result<(), HttpError> {
    let stats = &state.flight.engine.stats;
    s.counter(
        "pitwall_late_rows",
        "Rows that arrived with an event time below the watermark",
        stats.late_rows.load(Ordering::Relaxed),
    );
    let (wm, max) = (
        stats.watermark_ms.load(Ordering::Relaxed),
        stats.max_event_ms.load(Ordering::Relaxed),
    );
    s.gauge(
        "pitwall_watermark_delay_seconds",
        "Newest event time seen minus the watermark",
        if wm > 0 && max >= wm {
            (max - wm) as f64 / 1000.0
        } else {
            0.0
        },
    );
    let queries = state.flight.engine.list().await?;
    let per = |f: &dyn Fn(&crate::engine::QueryInfo) -> u64| -> Vec<(Labels, u64)> {
        queries
            .iter()
            .map(|q| (label("query", &q.name), f(q)))
            .collect()
    };
    s.counters(
        "pitwall_query_rows_out",
        "Rows each query emitted.",
        per(&|q| q.rows_emitted),
    );
    s.counters(
        "pitwall_query_late_rows_dropped",
        "Rows each query dropped because their window had closed",
        per(&|q| q.late_rows_dropped),
    );
    s.gauges(
        "pitwall_query_state_rows",
        "Rows each query holds as window state",
        per(&|q| q.state_rows)
            .into_iter()
            .map(|(l, v)| (l, v as f64)),
    );
    s.gauges(
        "pitwall_query_emit_latency_seconds",
        "From a micro-batch being ready to a query's rows being published (last 1000 emissions)",
        queries.iter().flat_map(|q| {
            [
                ("0.5", q.emit_latency_ms.p50),
                ("0.99", q.emit_latency_ms.p99),
            ]
            .map(|(quantile, ms)| {
                (
                    vec![
                        ("query".to_string(), q.name.clone()),
                        ("quantile".to_string(), quantile.to_string()),
                    ],
                    ms / 1000.0,
                )
            })
        }),
    );
    let flight: usize = queries.iter().map(|q| q.subscribers).sum();
    let dashboards = state.streams.load(Ordering::Relaxed);
    s.gauges(
        "pitwall_subscribers",
        "Open subscriptions: Flight DoGet streams, dashboard pages",
        [
            // A page's subscriptions to the queries it shows are not Flight's.
            (
                label("kind", "flight"),
                flight.saturating_sub(state.query_subscriptions.load(Ordering::Relaxed)) as f64,
            ),
            (label("kind", "dashboard"), dashboards as f64),
        ],
    );
    s.counters(
        "pitwall_subscribers_dropped",
        "Subscribers dropped for falling behind",
        [
            (
                label("kind", "flight"),
                state.flight.subscribers_dropped.load(Ordering::Relaxed),
            ),
            (
                label("kind", "dashboard"),
                state.dropped.load(Ordering::Relaxed),
            ),
        ],
    );
    Ok(())
}

fn archive_and_process(s: &mut Scrape, state: &WebState) {
    if let Some(a) = &state.flight.archive_stats {
        s.counter(
            "pitwall_archive_rows",
            "Raw rows archived.",
            a.rows.load(Ordering::Relaxed),
        );
        s.counter(
            "pitwall_archive_checkpoints",
            "Checkpoints committed",
            a.checkpoints.load(Ordering::Relaxed),
        );
        s.counter(
            "pitwall_archive_failures",
            "Failed attempts to write a checkpoint",
            a.failures.load(Ordering::Relaxed),
        );
        s.counter(
            "pitwall_archive_dead_letters_cut",
            "Dead letters archived without their payload, or not at all, past a checkpoint's bound",
            a.dead_letters_cut.load(Ordering::Relaxed),
        );
        let last = a.last_commit_ms.load(Ordering::Relaxed);
        let started = chrono::Utc::now().timestamp_millis()
            - state.flight.started.elapsed().as_millis() as i64;
        s.gauge(
            "pitwall_archive_commit_age_seconds",
            "Time since the last checkpoint was committed (since the start when none was)",
            (chrono::Utc::now().timestamp_millis() - last.max(started)) as f64 / 1000.0,
        );
    }
    let rss = memory_stats::memory_stats().map_or(0, |m| m.physical_mem);
    s.gauge(
        "pitwall_resident_memory_bytes",
        "Resident set size of the server.",
        rss as f64,
    );
    s.gauge(
        "pitwall_uptime_seconds",
        "Time since the server started",
        state.flight.started.elapsed().as_secs_f64(),
    );
}
