//! SQL golden files for continuous queries (`tests/queries/*.sql`).
//!
//! A file with a `-- fail: MESSAGE` line must be refused with exactly that message. Any other
//! file is streamed, with the shipped queries it reads, over laps 1-2 of the
//! bundled race in micro-batches; its rows must equal `NAME.out` and the same SQL run in
//! batch by DataFusion. Each file is a test of its own (libtest-mimic: the usual filters and
//! flags work); no file at all is a failure. `PITWALL_GOLDEN_COMPLETE=1 cargo test -p
//! pitwall-server --test golden` rewrites the `.out` files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pitwall_server::engine::oracle::{batch_result, canonical_rows, race_laps, stream};
use pitwall_server::engine::{Engine, EngineConfig, QueryDef};

fn files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/queries");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/queries")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("sql"))
        .collect();
    v.sort();
    v
}

/// The shipped queries `sql` reads, directly or through each other (streaming all twelve
/// for every file would make each file's run cost the detectors' too).
fn reads(shipped: &[QueryDef], sql: &str) -> Vec<QueryDef> {
    let mentions = |text: &str, name: &str| {
        text.match_indices(name).any(|(i, _)| {
            let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            !word(text[..i].chars().next_back()) && !word(text[i + name.len()..].chars().next())
        })
    };
    let mut texts = vec![sql.to_string()];
    let mut picked: Vec<&QueryDef> = Vec::new();
    while let Some(text) = texts.pop() {
        for q in shipped {
            if !picked.iter().any(|p| p.name == q.name) && mentions(&text, &q.name) {
                picked.push(q);
                texts.push(q.sql.clone());
            }
        }
    }
    shipped
        .iter()
        .filter(|q| picked.iter().any(|p| p.name == q.name))
        .cloned()
        .collect()
}

async fn check(path: &Path, complete: bool) -> Result<String, String> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("file name");
    let sql = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let def = QueryDef::parse(name, &sql).map_err(|e| e.to_string())?;
    let shipped = pitwall_server::initial_queries(None).map_err(|e| e.to_string())?;
    if let Some(expected) = sql
        .lines()
        .find_map(|l| l.trim().strip_prefix("-- fail:"))
        .map(str::trim)
    {
        let mut engine = Engine::new(EngineConfig::default()).map_err(|e| e.to_string())?;
        for q in shipped {
            engine.submit(q).await.map_err(|e| e.to_string())?;
        }
        let running = engine.list().len();
        return match engine.submit(def).await {
            Ok(_) => Err("was accepted, but must be refused".into()),
            Err(e) if e.to_string() != expected => {
                Err(format!("refused with\n  {e}\nexpected\n  {expected}"))
            }
            Err(e) if e.to_string().contains('\n') || e.to_string().len() > 300 => {
                Err(format!("not one short line: {e}"))
            }
            Err(_) if engine.list().len() != running => Err("the other queries stopped".into()),
            Err(_) => Ok("refused as expected; the other queries run on".into()),
        };
    }
    let rows = race_laps(2).map_err(|e| e.to_string())?;
    let mut all = reads(&shipped, &def.sql);
    all.push(def);
    let streamed = stream(&all, &rows, 50).await.map_err(|e| e.to_string())?;
    let got = canonical_rows(&streamed[name]);
    let batch = canonical_rows(
        &batch_result(&all, name, &rows)
            .await
            .map_err(|e| e.to_string())?,
    );
    if got != batch {
        return Err(format!(
            "streamed {} rows, batch {} rows: they differ",
            got.len(),
            batch.len()
        ));
    }
    if got.is_empty() {
        return Err("no rows: a golden query must produce some".into());
    }
    let out = path.with_extension("out");
    let text = got.join("\n") + "\n";
    if complete {
        std::fs::write(&out, &text).map_err(|e| e.to_string())?;
        return Ok(format!("{} rows written to {}", got.len(), out.display()));
    }
    let expected = std::fs::read_to_string(&out)
        .map_err(|_| format!("{} is missing: run with --complete", out.display()))?;
    if expected != text {
        let exp: Vec<&str> = expected.lines().collect();
        let first = got
            .iter()
            .zip(&exp)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(exp.len()));
        return Err(format!(
            "{} rows, {} expected; first difference at row {first}:\n  got  {:?}\n  want {:?}",
            got.len(),
            exp.len(),
            got.get(first),
            exp.get(first)
        ));
    }
    Ok(format!(
        "{} rows, equal to {} and to batch",
        got.len(),
        out.file_name().unwrap().to_string_lossy()
    ))
}

fn main() -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let complete = std::env::var_os("PITWALL_GOLDEN_COMPLETE").is_some_and(|v| v == "1");
    let rt = std::sync::Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let files = files();
    let count = files.len();
    let mut trials = vec![libtest_mimic::Trial::test(
        "golden_files_are_there",
        move || {
            if count == 0 {
                Err("no golden files in tests/queries".into())
            } else {
                Ok(())
            }
        },
    )];
    trials.extend(files.into_iter().map(|f| {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let rt = rt.clone();
        libtest_mimic::Trial::test(name, move || {
            rt.block_on(check(&f, complete))
                .map(|msg| println!("{}: {msg}", f.display()))
                .map_err(Into::into)
        })
    }));
    libtest_mimic::run(&args, trials).exit_code()
}
