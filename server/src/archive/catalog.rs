//! The archive as SQL tables, for Flight SQL and `pitwall sql`: `archive.telemetry` (partition
//! columns `session` and `driver`), `archive.results_<query>` (partition column `session` when
//! the query has one) and `archive.dead_letters`; plus the list of archived sessions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
use datafusion::prelude::SessionContext;

use super::store::Store;
use super::writer::telemetry_file_schema;
use crate::error::{Error, Result};

pub const SCHEMA: &str = "archive";

pub struct ArchiveCatalog {
    pub store: Store,
    /// Parquet footers (with page indexes) and per-file statistics, kept from one ad hoc query
    /// to the next: a file's entry is reused only while its size and modification time are
    /// unchanged, so new, compacted and deleted files are always seen as they are. File
    /// listings are not cached (the archive grows while it is queried).
    caches: Arc<CacheManager>,
}

/// Bounds of the caches above: a footer of an archive file is a few KB to a few tens of KB.
const METADATA_CACHE_BYTES: usize = 16 << 20;
const STATISTICS_CACHE_BYTES: usize = 4 << 20;

fn options(partitions: &[&str]) -> ListingOptions {
    ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            partitions
                .iter()
                .map(|p| (p.to_string(), DataType::Utf8))
                .collect(),
        )
}

fn decode(v: &str) -> String {
    let mut out = Vec::with_capacity(v.len());
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `key=` in a path, if any.
fn part_value(path: &str, key: &str) -> Option<String> {
    path.split('/')
        .find_map(|seg| seg.strip_prefix(&format!("{key}=")).map(decode))
}

impl ArchiveCatalog {
    pub fn new(store: Store) -> Result<Self> {
        let caches = CacheManager::try_new(
            &CacheManagerConfig::default()
                .with_metadata_cache_limit(METADATA_CACHE_BYTES)
                .with_file_statistics_cache_limit(STATISTICS_CACHE_BYTES),
        )?;
        Ok(Self { store, caches })
    }

    /// The cache configuration of a query context over the archive: the catalog's footer and
    /// statistics caches, no listing cache.
    pub fn cache_config(&self) -> CacheManagerConfig {
        CacheManagerConfig::default()
            .with_file_metadata_cache(Some(self.caches.get_file_metadata_cache()))
            .with_metadata_cache_limit(METADATA_CACHE_BYTES)
            .with_file_statistics_cache(self.caches.get_file_statistic_cache())
            .with_file_statistics_cache_limit(STATISTICS_CACHE_BYTES)
            .with_list_files_cache_limit(0)
    }

    async fn listing(
        &self,
        ctx: &SessionContext,
        dir: &str,
        partitions: &[&str],
        schema: Option<SchemaRef>,
    ) -> Result<Arc<ListingTable>> {
        let url = ListingTableUrl::parse(self.store.table_url(dir))?;
        let mut config = ListingTableConfig::new(url).with_listing_options(options(partitions));
        config = match schema {
            Some(s) => config.with_schema(s),
            None => config.infer_schema(&ctx.state()).await?,
        };
        Ok(Arc::new(ListingTable::try_new(config)?))
    }

    /// Registers the `archive` schema in `ctx`'s default catalog.
    pub async fn register(&self, ctx: &SessionContext, catalog: &str) -> Result<()> {
        self.store.register(ctx);
        let schema = MemorySchemaProvider::new();
        let telemetry = self.store.list("telemetry").await?;
        if telemetry.iter().any(|f| f.path.ends_with(".parquet")) {
            let t = self
                .listing(
                    ctx,
                    "telemetry",
                    &["session", "driver"],
                    Some(telemetry_file_schema()),
                )
                .await?;
            schema.register_table("telemetry".into(), t)?;
        }
        let results = self.store.list("results").await?;
        let mut queries: BTreeMap<String, bool> = BTreeMap::new();
        for f in results.iter().filter(|f| {
            f.path.ends_with(".parquet")
                && !f.path.rsplit('/').next().unwrap_or("").starts_with('.')
        }) {
            if let Some(q) = part_value(&f.path, "query") {
                *queries.entry(q).or_default() |= part_value(&f.path, "session").is_some();
            }
        }
        for (q, partitioned) in queries {
            let dir = format!("results/query={}", super::writer::escape(&q));
            let parts: &[&str] = if partitioned { &["session"] } else { &[] };
            match self.listing(ctx, &dir, parts, None).await {
                Ok(t) => {
                    schema.register_table(format!("results_{q}"), t)?;
                }
                Err(e) => tracing::warn!(query = %q, error = %e, "archived results not readable"),
            }
        }
        if self
            .store
            .list("dead_letters")
            .await?
            .iter()
            .any(|f| f.path.ends_with(".parquet"))
        {
            let t = self
                .listing(
                    ctx,
                    "dead_letters",
                    &[],
                    Some(crate::ingest::dead_letter::schema()),
                )
                .await?;
            schema.register_table("dead_letters".into(), t)?;
        }
        let cat = ctx
            .catalog(catalog)
            .ok_or_else(|| Error::Archive(format!("no catalog {catalog}")))?;
        cat.register_schema(SCHEMA, Arc::new(schema))?;
        Ok(())
    }

    /// One row per archived session: drivers, rows, time range, files and bytes on disk.
    pub async fn sessions(&self, ctx: &SessionContext) -> Result<RecordBatch> {
        let files = self.store.list("telemetry").await?;
        let mut disk: BTreeMap<String, (BTreeSet<String>, i64, i64)> = BTreeMap::new();
        for f in files.iter().filter(|f| {
            f.path.ends_with(".parquet")
                && !f.path.rsplit('/').next().unwrap_or("").starts_with('.')
        }) {
            let (Some(s), Some(d)) = (
                part_value(&f.path, "session"),
                part_value(&f.path, "driver"),
            ) else {
                continue;
            };
            let e = disk.entry(s).or_default();
            e.0.insert(d);
            e.1 += 1;
            e.2 += f.size as i64;
        }
        let mut counts: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
        if !disk.is_empty() {
            let df = ctx
                .sql("SELECT session, count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts FROM archive.telemetry GROUP BY session")
                .await?;
            for b in df.collect().await? {
                let s = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("utf8");
                let n = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("count");
                let first = datafusion::arrow::compute::cast(b.column(2), &DataType::Int64)?;
                let last = datafusion::arrow::compute::cast(b.column(3), &DataType::Int64)?;
                let first = first.as_any().downcast_ref::<Int64Array>().expect("i64");
                let last = last.as_any().downcast_ref::<Int64Array>().expect("i64");
                for i in 0..b.num_rows() {
                    counts.insert(
                        s.value(i).to_string(),
                        (n.value(i), first.value(i), last.value(i)),
                    );
                }
            }
        }
        let ts = DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Millisecond,
            Some("UTC".into()),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("session", DataType::Utf8, false),
            Field::new("drivers", DataType::Int64, false),
            Field::new("driver_list", DataType::Utf8, false),
            Field::new("rows", DataType::Int64, false),
            Field::new("first_ts", ts.clone(), true),
            Field::new("last_ts", ts, true),
            Field::new("files", DataType::Int64, false),
            Field::new("bytes_on_disk", DataType::Int64, false),
        ]));
        let names: Vec<&String> = disk.keys().collect();
        let get = |s: &String| counts.get(s).copied();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                names.iter().map(|s| s.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                names.iter().map(|s| disk[*s].0.len() as i64),
            )),
            Arc::new(StringArray::from_iter_values(names.iter().map(|s| {
                disk[*s].0.iter().cloned().collect::<Vec<_>>().join(" ")
            }))),
            Arc::new(Int64Array::from_iter_values(
                names.iter().map(|s| get(s).map_or(0, |c| c.0)),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter(names.iter().map(|s| get(s).map(|c| c.1)))
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMillisecondArray::from_iter(names.iter().map(|s| get(s).map(|c| c.2)))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(
                names.iter().map(|s| disk[*s].1),
            )),
            Arc::new(Int64Array::from_iter_values(
                names.iter().map(|s| disk[*s].2),
            )),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}
