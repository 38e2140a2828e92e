//! The archive as SQL tables, for Flight SQL and `pitwall sql`: `archive.telemetry` (partition
//! columns `session` and `driver`), `archive.results_<query>` (partition column `session` when
//! the query has one) and `archive.dead_letters`; plus the list of archived sessions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::store::Store;
use super::visible::{Listings, View};
use super::writer::telemetry_file_schema;
use crate::error::{Error, Result};

pub(crate) const SCHEMA: &str = "archive";

pub struct ArchiveCatalog {
    pub store: Store,
    /// Parquet footers (with page indexes) and per-file statistics, kept from one ad hoc query
    /// to the next: a file's entry is reused only while its size and modification time are
    /// unchanged, so new, compacted and deleted files are always seen as they are.
    caches: Arc<CacheManager>,
    /// File listings, kept while the newest commit stays the same (see [`Listings`]);
    /// DataFusion's own listing cache stays off, it knows nothing of commits.
    listings: Arc<Listings>,
    /// Whether this server writes the archive (see [`View::of`]).
    written_here: bool,
    /// A shared archive (`super::shared`): its tables are the union of the writers' parts.
    shared: bool,
}

/// Bounds of the caches above: a footer of an archive file is a few KB to a few tens of KB.
const METADATA_CACHE_BYTES: usize = 16 << 20;
const STATISTICS_CACHE_BYTES: usize = 4 << 20;

/// Partition values (`session`, `driver`) are string views, like the string columns DataFusion
/// reads from Parquet: a key of a few bytes sits inside its view, so grouping by driver
/// compares views, not bytes (per-lap statistics over a race ~7% faster, BENCHMARKS.md).
fn options(partitions: &[&str]) -> ListingOptions {
    ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            partitions
                .iter()
                .map(|p| (p.to_string(), DataType::Utf8View))
                .collect(),
        )
}

/// `dir` inside `part` (the root when empty).
fn join(part: &str, dir: &str) -> String {
    if part.is_empty() {
        dir.to_string()
    } else {
        format!("{part}/{dir}")
    }
}

/// A partition value as written by [`super::writer::escape`].
fn decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

/// A committed Parquet file (not a hidden temporary still being written).
pub(super) fn is_data_file(path: &str) -> bool {
    path.ends_with(".parquet") && !path.rsplit('/').next().unwrap_or("").starts_with('.')
}

/// The value of `key=` in a path, if any.
fn part_value(path: &str, key: &str) -> Option<String> {
    path.split('/')
        .find_map(|seg| seg.strip_prefix(&format!("{key}=")).map(decode))
}

impl ArchiveCatalog {
    /// The catalog of the archive this server writes: a query sees committed checkpoints
    /// only, none before the first commit.
    pub fn written_here(store: Store) -> Result<Self> {
        Ok(Self {
            written_here: true,
            ..Self::new(store)?
        })
    }

    /// The catalog of a shared archive (`--shared-archive`, its root): every writer's part
    /// as of that writer's newest commit, one table over all of them.
    pub(crate) fn shared(store: Store) -> Result<Self> {
        Ok(Self {
            shared: true,
            ..Self::new(store)?
        })
    }

    /// What a query sees now.
    async fn view(&self) -> Result<View> {
        if self.shared {
            View::of_shared(&self.store).await
        } else {
            View::of(&self.store, self.written_here).await
        }
    }

    /// The directories holding an archive's layout: the root, or each writer's part.
    async fn parts(&self) -> Result<Vec<String>> {
        if !self.shared {
            return Ok(vec![String::new()]);
        }
        let writers = self.store.subdirs(super::shared::WRITERS).await?;
        Ok(writers
            .iter()
            .map(|n| format!("{}/{n}", super::shared::WRITERS))
            .collect())
    }

    /// The catalog of any archive in Pitwall's layout; one without commit records (copied
    /// without `_pitwall/`, written by another tool) shows every file.
    pub fn new(store: Store) -> Result<Self> {
        let caches = CacheManager::try_new(
            &CacheManagerConfig::default()
                .with_metadata_cache_limit(METADATA_CACHE_BYTES)
                .with_file_statistics_cache_limit(STATISTICS_CACHE_BYTES),
        )?;
        Ok(Self {
            store,
            caches,
            listings: Arc::default(),
            written_here: false,
            shared: false,
        })
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

    /// Registers the `archive` schema in `ctx`'s catalog `catalog`. Which tables exist comes
    /// from two directory listings; each table is built only when a query names it (the
    /// private `ArchiveSchema` below).
    pub async fn register(&self, ctx: &SessionContext, catalog: &str) -> Result<()> {
        let view = self.view().await?;
        self.store
            .register(ctx, view.clone(), self.listings.clone())?;
        let parts = self.parts().await?;
        let mut tables = BTreeMap::new();
        for part in &parts {
            let top = self.store.subdirs(part).await?;
            if top.iter().any(|d| d == "telemetry") {
                tables.insert("telemetry".to_string(), TableDef::Telemetry);
            }
            if top.iter().any(|d| d == "dead_letters") {
                tables.insert("dead_letters".to_string(), TableDef::DeadLetters);
            }
            if top.iter().any(|d| d == "results") {
                for dir in self.store.subdirs(&join(part, "results")).await? {
                    if let Some(q) = dir.strip_prefix("query=") {
                        tables.insert(
                            format!("results_{}", decode(q)),
                            TableDef::Results(format!("results/{dir}")),
                        );
                    }
                }
            }
        }
        let schema = ArchiveSchema {
            store: self.store.clone(),
            parts,
            view,
            config: ctx.copied_config(),
            runtime: ctx.runtime_env(),
            tables,
            built: Mutex::default(),
        };
        let cat = ctx
            .catalog(catalog)
            .ok_or_else(|| Error::Archive(format!("no catalog {catalog}")))?;
        cat.register_schema(SCHEMA, Arc::new(schema))?;
        Ok(())
    }

    /// Makes `ctx` read the archive as of its newest commit (a query registered earlier reads
    /// it as of the commit that was newest then).
    pub async fn refresh(&self, ctx: &SessionContext) -> Result<()> {
        // A listed file went: if the kept listing still had it (another writer, a hand on
        // the directory), listing afresh is what finds the archive as it is.
        self.listings.clear();
        self.store
            .register(ctx, self.view().await?, self.listings.clone())
    }

    /// One row per archived session: drivers, rows, time range, files and bytes on disk.
    pub async fn sessions(&self, ctx: &SessionContext) -> Result<RecordBatch> {
        let mut files = Vec::new();
        for part in self.parts().await? {
            files.extend(self.store.list(&join(&part, "telemetry")).await?);
        }
        let view = self.view().await?;
        let mut disk: BTreeMap<String, (BTreeSet<String>, i64, i64)> = BTreeMap::new();
        for f in files
            .iter()
            .filter(|f| is_data_file(&f.path) && view.shows(&f.path))
        {
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
                let s = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
                let s = s.as_string::<i32>();
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

/// What a table of the `archive` schema reads.
#[derive(Debug)]
enum TableDef {
    /// `telemetry/session=.../driver=...`, with the writer's schema.
    Telemetry,
    /// `dead_letters/`, with the dead-letter schema.
    DeadLetters,
    /// `results/query=...[/session=...]`, with the schema of the files found there.
    Results(String),
}

/// The `archive` schema of one ad hoc query's context. Table names come from directory names
/// alone; a table is built (its files listed, a results table's schema read from its files'
/// footers) the first time the query names it, so a query over `archive.telemetry` opens no
/// results file. A results directory with no Parquet file in it yet has no table; the
/// telemetry and dead-letter tables read as empty until their first file.
#[derive(Debug)]
struct ArchiveSchema {
    store: Store,
    /// Where the archive's layout is: the root, or each writer's part of a shared archive.
    parts: Vec<String>,
    /// What this query sees of the archive.
    view: View,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    tables: BTreeMap<String, TableDef>,
    built: Mutex<HashMap<String, Option<Arc<dyn TableProvider>>>>,
}

impl ArchiveSchema {
    fn built(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Arc<dyn TableProvider>>>> {
        self.built.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn build(&self, def: &TableDef) -> Result<Option<Arc<dyn TableProvider>>> {
        let (dir, partitions, schema): (&str, &[&str], _) = match def {
            TableDef::Telemetry => (
                "telemetry",
                &["session", "driver"],
                Some(telemetry_file_schema()),
            ),
            TableDef::DeadLetters => (
                "dead_letters",
                &[],
                Some(crate::ingest::dead_letter::schema()),
            ),
            TableDef::Results(dir) => (dir.as_str(), &[], None),
        };
        // A results table needs a file: for its schema, and to tell whether the query has a
        // `session` column (then results are partitioned by it). Fixed-schema tables list
        // their files only when scanned (partition-pruned, by DataFusion).
        let mut partitions = partitions;
        let mut dirs = Vec::new();
        for part in &self.parts {
            let d = join(part, dir);
            if let TableDef::Results(_) = def {
                let files = self.store.list(&d).await?;
                let parquet: Vec<&str> = files
                    .iter()
                    .map(|f| f.path.as_str())
                    .filter(|p| is_data_file(p) && self.view.shows(p))
                    .collect();
                if parquet.is_empty() {
                    continue;
                }
                if parquet.iter().any(|p| part_value(p, "session").is_some()) {
                    partitions = &["session"];
                }
                dirs.push(d);
            } else if self.parts.len() == 1
                || self.store.subdirs(part).await?.iter().any(|x| x == dir)
            {
                dirs.push(d);
            }
        }
        if dirs.is_empty() {
            return Ok(None);
        }
        let urls = dirs
            .iter()
            .map(|d| ListingTableUrl::parse(self.store.table_url(d)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let mut config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options(partitions));
        config = match schema {
            Some(s) => config.with_schema(s),
            None => {
                // A state for reading footers: this context's settings, runtime (object
                // stores, footer cache) and nothing else.
                let state = SessionStateBuilder::new()
                    .with_config(self.config.clone())
                    .with_runtime_env(self.runtime.clone())
                    .build();
                config.infer_schema(&state).await?
            }
        };
        // The table reads and fills the runtime's statistics cache (the catalog's, see
        // `ArchiveCatalog::cache_config`); a listing table has no cache unless given one.
        let cache = self.runtime.cache_manager.get_file_statistic_cache();
        Ok(Some(Arc::new(
            ListingTable::try_new(config)?.with_cache(cache),
        )))
    }
}

#[async_trait]
impl SchemaProvider for ArchiveSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        let Some(def) = self.tables.get(name) else {
            return Ok(None);
        };
        if let Some(t) = self.built().get(name) {
            return Ok(t.clone());
        }
        let table = match self.build(def).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "archived table not readable");
                None
            }
        };
        self.built().insert(name.to_string(), table.clone());
        Ok(table)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::array::cast::AsArray;
    use datafusion::arrow::datatypes::Int64Type;

    fn write(root: &std::path::Path, rel: &str, batch: &RecordBatch) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(path).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    /// Two result rows, lap 1 of VER and HAM.
    fn laps() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "driver",
                Arc::new(StringArray::from(vec!["VER", "HAM"])) as ArrayRef,
            ),
            ("lap", Arc::new(Int32Array::from(vec![1, 1])) as ArrayRef),
        ])
        .unwrap()
    }

    async fn count(
        ctx: &SessionContext,
        sql: &str,
    ) -> datafusion::error::Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for b in ctx.sql(sql).await?.collect().await? {
            for i in 0..b.num_rows() {
                let key = datafusion::arrow::util::display::array_value_to_string(b.column(0), i)?;
                out.push((key, b.column(1).as_primitive::<Int64Type>().value(i)));
            }
        }
        out.sort();
        Ok(out)
    }

    #[test]
    fn partition_values_round_trip() {
        for v in ["VER", "2023 British GP / race", "ünïcode", "a%b", "x=y"] {
            let escaped = super::super::writer::escape(v);
            assert_eq!(
                part_value(&format!("results/query={escaped}/f"), "query").unwrap(),
                v
            );
        }
    }

    #[tokio::test]
    async fn tables_come_from_directories_and_are_built_when_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let laps = laps();
        write(
            root,
            "results/query=lap_stats/session=s1/part-1.parquet",
            &laps,
        );
        write(
            root,
            "results/query=lap_stats/session=s2/part-2.parquet",
            &laps.slice(0, 1),
        );
        write(
            root,
            "results/query=over_rev/part-1.parquet",
            &laps.slice(1, 1),
        );
        // A query whose first file is still being written: only a hidden temporary.
        std::fs::create_dir_all(root.join("results/query=fresh")).unwrap();
        std::fs::write(
            root.join("results/query=fresh/.part-3.parquet.tmp"),
            b"PAR1",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("telemetry")).unwrap();

        let catalog = ArchiveCatalog::new(Store::open(root.to_str().unwrap()).unwrap()).unwrap();
        let ctx = SessionContext::new();
        catalog.register(&ctx, "datafusion").await.unwrap();
        let schema = ctx.catalog("datafusion").unwrap().schema(SCHEMA).unwrap();
        assert_eq!(
            schema.table_names(),
            [
                "results_fresh",
                "results_lap_stats",
                "results_over_rev",
                "telemetry"
            ]
        );

        // Partitioned by session because its files are under `session=` directories.
        let by_session = count(
            &ctx,
            "SELECT session, count(*) FROM archive.results_lap_stats GROUP BY session",
        )
        .await
        .unwrap();
        assert_eq!(by_session, [("s1".to_string(), 2), ("s2".to_string(), 1)]);
        let over_rev = count(
            &ctx,
            "SELECT driver, count(*) FROM archive.results_over_rev GROUP BY driver",
        )
        .await
        .unwrap();
        assert_eq!(over_rev, [("HAM".to_string(), 1)]);
        // No Parquet file yet: no table. Telemetry with no file yet reads as empty.
        let err = count(
            &ctx,
            "SELECT driver, count(*) FROM archive.results_fresh GROUP BY driver",
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("results_fresh"), "{err}");
        let telemetry = count(
            &ctx,
            "SELECT driver, count(*) FROM archive.telemetry GROUP BY driver",
        )
        .await
        .unwrap();
        assert!(telemetry.is_empty());
    }

    /// The first checkpoint's files are on disk before its commit record: a query of the
    /// archive this server writes counts none of them until the record is there; one of an
    /// archive without commit records (copied without `_pitwall/`) counts every file.
    #[tokio::test]
    async fn before_its_first_commit_the_archive_written_here_shows_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let laps = laps();
        let rel = format!(
            "results/query=lap_stats/session=s1/{}",
            super::super::writer::part_name(1, 0)
        );
        write(root, &rel, &laps);
        let sql = "SELECT session, count(*) FROM archive.results_lap_stats GROUP BY session";
        let query = |catalog: ArchiveCatalog| async move {
            let ctx = SessionContext::new();
            catalog.register(&ctx, "datafusion").await.unwrap();
            count(&ctx, sql).await
        };
        let store = || Store::open(root.to_str().unwrap()).unwrap();
        let err = query(ArchiveCatalog::written_here(store()).unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("results_lap_stats"), "{err}");
        let all = [("s1".to_string(), 2)];
        assert_eq!(
            query(ArchiveCatalog::new(store()).unwrap()).await.unwrap(),
            all
        );
        // Its commit record comes: now it shows.
        let record = super::super::CommitRecord {
            seq: 1,
            created: String::new(),
            state: super::super::state_path(1),
            consumed: BTreeMap::new(),
            watermark_ms: None,
            files: vec![],
            replaces: vec![],
        };
        let path = root.join(super::super::commit_path(1));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(
            query(ArchiveCatalog::written_here(store()).unwrap())
                .await
                .unwrap(),
            all
        );
    }
}
