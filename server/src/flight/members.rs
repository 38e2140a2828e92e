//! Who else serves this topic's results. Servers in one consumer group each compute the
//! results of their own partitions; a client asking any of them must find the others. Each
//! server given `--members-dir` (a directory all of them see) writes there, every second, a
//! small JSON record: its Flight location (`--advertise-addr`), its group and topic, and the
//! partitions it owns. `ListFlights` and `GetFlightInfo` of a continuous query then return one
//! endpoint per live server that owns partitions (Flight's multi-endpoint model: this server's
//! own as `arrow-flight-reuse-connection://?`), and `pitwall watch` follows them all. A record
//! not rewritten for [`STALE_AFTER`] is a server gone; a clean stop removes its record.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ingest::IngestStats;

/// A record older than this is a server that stopped or is stuck.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(10);
/// How often a server rewrites its record.
const EVERY: Duration = Duration::from_secs(1);
/// The location a Flight endpoint gives for "the connection you are on".
pub(crate) const REUSE: &str = "arrow-flight-reuse-connection://?";

/// One server's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub location: String,
    pub topic: String,
    pub group: String,
    pub partitions: Vec<i32>,
    pub updated_ms: i64,
}

/// This server's place among the members.
pub(crate) struct Members {
    /// `members_dir/GROUP`.
    dir: PathBuf,
    topic: String,
    group: String,
    /// Known once the Flight endpoint is bound (`--advertise-addr` or the bound address).
    location: OnceLock<String>,
    ingest: Arc<IngestStats>,
}

/// A file name for a location (one record per server).
fn file_name(location: &str) -> String {
    let safe: String = location
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{safe}.json")
}

impl Members {
    pub(crate) fn new(dir: &Path, topic: &str, group: &str, ingest: Arc<IngestStats>) -> Self {
        Self {
            dir: dir.join(file_name(group).trim_end_matches(".json")),
            topic: topic.to_string(),
            group: group.to_string(),
            location: OnceLock::new(),
            ingest,
        }
    }

    /// This server's location, once bound.
    pub(crate) fn set_location(&self, location: String) {
        let _ = self.location.set(location);
    }

    fn write(&self) -> std::io::Result<()> {
        let Some(location) = self.location.get() else {
            return Ok(());
        };
        let record = Member {
            location: location.clone(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            partitions: self.ingest.group().assigned,
            updated_ms: chrono::Utc::now().timestamp_millis(),
        };
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(file_name(location));
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(
            &tmp,
            serde_json::to_vec(&record).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }

    /// Removes this server's record (a clean stop).
    pub(crate) fn leave(&self) {
        if let Some(location) = self.location.get() {
            let _ = std::fs::remove_file(self.dir.join(file_name(location)));
        }
    }

    /// The other live servers of the group and topic that own partitions.
    pub(crate) fn others(&self) -> Vec<Member> {
        let me = self.location.get();
        let now = chrono::Utc::now().timestamp_millis();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut members: Vec<Member> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Member>(&b).ok())
            .filter(|m| Some(&m.location) != me && m.topic == self.topic && m.group == self.group)
            .filter(|m| now - m.updated_ms <= STALE_AFTER.as_millis() as i64)
            .filter(|m| !m.partitions.is_empty())
            .collect();
        members.sort_by(|a, b| a.location.cmp(&b.location));
        members
    }

    /// [`Self::others`] off the async threads; none without `--members-dir`.
    pub(crate) async fn others_of(members: Option<&Arc<Self>>) -> Vec<Member> {
        let Some(m) = members.cloned() else {
            return Vec::new();
        };
        tokio::task::spawn_blocking(move || m.others())
            .await
            .unwrap_or_default()
    }

    /// Rewrites the record every second until `shutdown`, then removes it.
    pub(crate) fn spawn(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.write()).await {
                    Ok(Ok(())) => warned = false,
                    Ok(Err(e)) if !warned => {
                        warned = true;
                        tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write this server's member record; other servers will not list it");
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(EVERY) => {}
                }
            }
            self.leave();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_sees_the_others_of_its_group_that_own_partitions_and_are_alive() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(IngestStats::default());
        let member = |loc: &str| {
            let m = Members::new(dir.path(), "t", "g", stats.clone());
            m.set_location(loc.to_string());
            m
        };
        let (a, b) = (member("grpc://a:1"), member("grpc://b:2"));
        // Owning nothing: written, not listed.
        a.write().unwrap();
        b.write().unwrap();
        assert!(a.others().is_empty());
        let mut status = stats.group();
        status.assigned = vec![0, 3];
        stats.set_group(status);
        b.write().unwrap();
        let others = a.others();
        assert_eq!(others.len(), 1, "{others:?}");
        assert_eq!(
            (others[0].location.as_str(), others[0].partitions.as_slice()),
            ("grpc://b:2", &[0, 3][..])
        );
        // Another group or topic, a stale record, a torn file: not listed.
        let c = Members::new(dir.path(), "t", "other", stats.clone());
        c.set_location("grpc://c:3".into());
        c.write().unwrap();
        let stale = Member {
            location: "grpc://d:4".into(),
            topic: "t".into(),
            group: "g".into(),
            partitions: vec![1],
            updated_ms: chrono::Utc::now().timestamp_millis() - 11_000,
        };
        std::fs::write(
            a.dir.join(file_name(&stale.location)),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        std::fs::write(a.dir.join("torn.json"), b"{\"location\":").unwrap();
        let locations: Vec<String> = a.others().into_iter().map(|m| m.location).collect();
        assert_eq!(locations, ["grpc://b:2"]);
        b.leave();
        assert!(a.others().is_empty());
    }
}
