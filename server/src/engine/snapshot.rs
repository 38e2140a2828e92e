//! Engine checkpoints: the state of every open window, written with the archive so that a
//! restarted server resumes exactly where the last checkpoint left off.
//!
//! A snapshot is a JSON manifest (watermarks, consumed offsets, and per query the structure of
//! its open windows) whose record batches are stored as Arrow IPC streams next to it:
//! `PWSTATE1`, the manifest length (u64 LE), the manifest, then per batch its length (u64 LE)
//! and its IPC bytes.

use std::collections::BTreeMap;
use std::io::Cursor;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"PWSTATE1";

/// Batches referenced by index from the manifest.
#[derive(Default)]
pub struct Batches(pub Vec<RecordBatch>);

impl Batches {
    pub fn put(&mut self, b: &RecordBatch) -> usize {
        self.0.push(b.clone());
        self.0.len() - 1
    }
    pub fn put_all(&mut self, bs: &[RecordBatch]) -> Vec<usize> {
        bs.iter().map(|b| self.put(b)).collect()
    }
    pub fn get(&self, i: usize) -> Result<RecordBatch> {
        self.0
            .get(i)
            .cloned()
            .ok_or_else(|| Error::Archive(format!("checkpoint refers to missing batch {i}")))
    }
    pub fn get_all(&self, idx: &[usize]) -> Result<Vec<RecordBatch>> {
        idx.iter().map(|&i| self.get(i)).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimeWindowsState {
    pub size_ms: i64,
    pub closed_through: Option<i64>,
    /// window start -> batches
    pub open: Vec<(i64, Vec<usize>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LapState {
    pub lap: i64,
    pub min_ts: Option<i64>,
    pub rows: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CarState {
    pub car: Vec<u8>,
    pub closed_upto: Option<i64>,
    pub last_ts: i64,
    pub open: Vec<LapState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LapWindowsState {
    pub gap_ms: i64,
    pub cars: Vec<CarState>,
    /// Checkpoints written before cars were released have none.
    #[serde(default)]
    pub forgotten_upto: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum StageState {
    Time(TimeWindowsState),
    Laps(LapWindowsState),
    WindowFn {
        held: Vec<usize>,
        released_through: Option<i64>,
        retained: Option<usize>,
        pending: Vec<u64>,
        next_seq: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueryState {
    pub name: String,
    /// Hash of the SQL and parameter values the state was built with.
    pub fingerprint: String,
    pub late_rows: u64,
    pub stages: Vec<StageState>,
    /// The query as it ran: SQL, parameter values (SQL literals) and whether it was paused, so
    /// a restart resumes what ran, run-time changes included (checkpoints written before
    /// these existed have none: the query files' versions run).
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub params: Vec<(String, String)>,
    #[serde(default)]
    pub paused: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WatermarkState {
    pub current: Option<i64>,
    /// partition -> highest event time delivered, in checkpoints written before `topics`
    /// (their one topic is the one of their offsets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<(i32, i64)>,
    /// topic -> (partition -> highest event time delivered)
    #[serde(default)]
    pub topics: BTreeMap<String, Vec<(i32, i64)>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineState {
    pub watermark: WatermarkState,
    /// "topic/partition" -> next offset to read
    pub consumed: BTreeMap<String, i64>,
    pub queries: Vec<QueryState>,
    /// The query files (name -> SQL text) the server started from. A file whose text still
    /// matches yields to what ran (the run-time version, or its absence once dropped); one
    /// edited since wins. None in checkpoints written before it existed.
    #[serde(default)]
    pub files: Option<BTreeMap<String, String>>,
    /// "topic/partition" -> the cars (drivers) whose rows came from it, so that another
    /// server taking the partition over can cut their state out (`engine::handover`).
    #[serde(default)]
    pub cars: BTreeMap<String, Vec<String>>,
    /// "topic/partition" -> how many times the partition was taken over in a shared archive
    /// (`engine::handover`): of two checkpoints at the same offset, the later owner's wins.
    #[serde(default)]
    pub epochs: BTreeMap<String, u64>,
}

pub(crate) fn offset_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

pub(crate) fn parse_offset_key(key: &str) -> Option<(String, i32)> {
    let (t, p) = key.rsplit_once('/')?;
    Some((t.to_string(), p.parse().ok()?))
}

pub(crate) fn encode(state: &EngineState, batches: &Batches) -> Result<Vec<u8>> {
    let manifest = serde_json::to_vec(state)
        .map_err(|e| Error::Archive(format!("checkpoint manifest: {e}")))?;
    let mut out = Vec::with_capacity(manifest.len() + 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(manifest.len() as u64).to_le_bytes());
    out.extend_from_slice(&manifest);
    for b in &batches.0 {
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &b.schema())?;
            w.write(b)?;
            w.finish()?;
        }
        out.extend_from_slice(&(buf.len() as u64).to_le_bytes());
        out.extend_from_slice(&buf);
    }
    Ok(out)
}

pub(crate) fn decode(bytes: &[u8]) -> Result<(EngineState, Batches)> {
    let bad = |what: &str| Error::Archive(format!("checkpoint is damaged: {what}"));
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(bad("not a Pitwall checkpoint"));
    }
    let take_len = |at: usize| -> Result<usize> {
        let raw: [u8; 8] = bytes
            .get(at..at + 8)
            .ok_or_else(|| bad("truncated"))?
            .try_into()
            .expect("8 bytes");
        Ok(u64::from_le_bytes(raw) as usize)
    };
    let n = take_len(8)?;
    let manifest = bytes
        .get(16..16 + n)
        .ok_or_else(|| bad("truncated manifest"))?;
    let state: EngineState = serde_json::from_slice(manifest).map_err(|e| bad(&e.to_string()))?;
    let mut at = 16 + n;
    let mut batches = Batches::default();
    while at < bytes.len() {
        let len = take_len(at)?;
        let blob = bytes
            .get(at + 8..at + 8 + len)
            .ok_or_else(|| bad("truncated batch"))?;
        let mut reader = StreamReader::try_new(Cursor::new(blob), None)?;
        let b = reader.next().ok_or_else(|| bad("empty batch"))??;
        batches.0.push(b);
        at += 8 + len;
    }
    Ok((state, batches))
}

/// The queries a restart runs: the query files merged with what the checkpoint ran.
#[derive(Debug, Default)]
pub(crate) struct Resumed {
    pub defs: Vec<crate::engine::QueryDef>,
    pub paused: Vec<String>,
    /// Queries whose run-time version (SQL, parameters, submitted or dropped at run time)
    /// replaces the query files'.
    pub from_checkpoint: Vec<String>,
}

/// Merges the query `files` with the live query set of a checkpoint: a query that ran is
/// resumed as it ran (SQL, parameter values, paused), one dropped at run time stays dropped,
/// one submitted at run time comes back; but a query file edited (or added) since the
/// checkpoint's server started wins, as the operator's latest word.
pub(crate) fn resume(files: Vec<crate::engine::QueryDef>, state: Option<&EngineState>) -> Resumed {
    use crate::engine::QueryDef;
    let Some((state, baseline)) = state.and_then(|s| Some((s, s.files.as_ref()?))) else {
        return Resumed {
            defs: files,
            ..Resumed::default()
        };
    };
    let edited = |f: &QueryDef| baseline.get(&f.name) != Some(&f.sql);
    let mut out = Resumed::default();
    for qs in &state.queries {
        let file = files.iter().find(|f| f.name == qs.name);
        if let Some(f) = file.filter(|f| edited(f)) {
            out.defs.push(f.clone());
            continue;
        }
        match qs
            .sql
            .as_deref()
            .map(|sql| ran_as(&qs.name, sql, &qs.params))
        {
            Some(Ok(def)) => {
                if file.is_none_or(|f| f.sql != def.sql || f.params != def.params) {
                    out.from_checkpoint.push(qs.name.clone());
                }
                if qs.paused {
                    out.paused.push(qs.name.clone());
                }
                out.defs.push(def);
            }
            Some(Err(e)) => {
                tracing::warn!(query = %qs.name, error = %e, "the checkpoint's version cannot be read; the query file's runs");
                out.defs.extend(file.cloned());
            }
            None => out.defs.extend(file.cloned()),
        }
    }
    for f in files {
        let ran = state.queries.iter().any(|q| q.name == f.name);
        if !ran && edited(&f) {
            out.defs.push(f);
        } else if !ran {
            out.from_checkpoint.push(f.name.clone());
        }
    }
    out
}

/// A query as a checkpoint recorded it.
fn ran_as(
    name: &str,
    sql: &str,
    params: &[(String, String)],
) -> crate::error::Result<crate::engine::QueryDef> {
    let mut def = crate::engine::QueryDef::parse(name, sql)?;
    for (k, v) in params {
        let value = crate::engine::definition::parse_literal(v)
            .map_err(|e| crate::error::Error::Archive(format!("{name}: ${k}: {e}")))?;
        def.params.insert(k.clone(), value);
    }
    Ok(def)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn round_trip() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, true)]));
        let b = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int32Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        let mut batches = Batches::default();
        let i = batches.put(&b);
        let state = EngineState {
            watermark: WatermarkState {
                current: Some(5),
                partitions: Vec::new(),
                topics: [("t".to_string(), vec![(0, 9)])].into(),
            },
            consumed: [(offset_key("t", 3), 42)].into(),
            queries: vec![QueryState {
                name: "q".into(),
                fingerprint: "f".into(),
                late_rows: 1,
                stages: vec![StageState::Time(TimeWindowsState {
                    size_ms: 1000,
                    closed_through: Some(0),
                    open: vec![(1000, vec![i])],
                })],
                sql: Some("SELECT 1".into()),
                params: vec![("p".into(), "2.5".into())],
                paused: true,
            }],
            files: Some([("q".to_string(), "SELECT 1".to_string())].into()),
            cars: [(offset_key("t", 3), vec!["VER".to_string()])].into(),
            epochs: [(offset_key("t", 3), 2)].into(),
        };
        let bytes = encode(&state, &batches).unwrap();
        let (s2, b2) = decode(&bytes).unwrap();
        assert_eq!(s2, state);
        assert_eq!(b2.0[0], b);
        assert!(decode(&bytes[..bytes.len() - 3]).is_err());
        assert_eq!(parse_offset_key("a/b/7"), Some(("a/b".into(), 7)));
    }

    /// Issue 24 point 11: a restart runs what ran, run-time changes included, except where
    /// the operator edited a query file since.
    #[test]
    fn a_restart_resumes_run_time_changes_unless_a_file_was_edited_since() {
        use crate::engine::QueryDef;
        let def = |name: &str, sql: &str| QueryDef::parse(name, sql).unwrap();
        let ran = |name: &str, sql: &str, params: &[(&str, &str)], paused: bool| QueryState {
            name: name.into(),
            fingerprint: String::new(),
            late_rows: 0,
            stages: Vec::new(),
            sql: Some(sql.into()),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            paused,
        };
        let p = "-- @param t = 1\nSELECT * FROM telemetry WHERE rpm > $t";
        let baseline: BTreeMap<String, String> = [
            ("replaced", "SELECT * FROM telemetry"),
            ("dropped", "SELECT * FROM telemetry"),
            ("edited", "SELECT * FROM telemetry"),
            ("tuned", p),
        ]
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
        let state = EngineState {
            queries: vec![
                ran("replaced", "SELECT driver FROM telemetry", &[], false),
                ran("edited", "SELECT ts FROM telemetry", &[], false),
                ran("tuned", p, &[("t", "11500")], true),
                ran("submitted", "SELECT lap FROM telemetry", &[], false),
            ],
            files: Some(baseline.clone()),
            cars: BTreeMap::new(),
            epochs: BTreeMap::new(),
            ..EngineState::default()
        };
        let mut files: Vec<QueryDef> = baseline.iter().map(|(n, s)| def(n, s)).collect();
        files.iter_mut().find(|f| f.name == "edited").unwrap().sql =
            "SELECT rpm FROM telemetry".into();
        files.push(def("added", "SELECT gear FROM telemetry"));
        let r = resume(files.clone(), Some(&state));
        let by_name: BTreeMap<&str, &QueryDef> =
            r.defs.iter().map(|d| (d.name.as_str(), d)).collect();
        assert_eq!(
            by_name.keys().copied().collect::<Vec<_>>(),
            ["added", "edited", "replaced", "submitted", "tuned"],
            "dropped stays dropped, submitted and added run"
        );
        assert_eq!(by_name["replaced"].sql, "SELECT driver FROM telemetry");
        assert_eq!(
            by_name["edited"].sql, "SELECT rpm FROM telemetry",
            "the edited file wins"
        );
        assert_eq!(
            crate::engine::definition::literal_text(&by_name["tuned"].params["t"]),
            "11500"
        );
        assert_eq!(r.paused, ["tuned"]);
        // A checkpoint from before run-time changes were kept: the files as they are.
        let old = EngineState {
            files: None,
            cars: BTreeMap::new(),
            epochs: BTreeMap::new(),
            ..state
        };
        let r = resume(files.clone(), Some(&old));
        assert_eq!(r.defs.len(), files.len());
        assert!(r.paused.is_empty());
    }
}
