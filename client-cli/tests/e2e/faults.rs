//! Faults injected into the race (`pitwall faults inject`), played by the server's embedded
//! replay, found by the shipped detector queries, shown on the dashboard's alert list and by
//! `pitwall watch alerts`, and scored against their labels (`pitwall faults score`).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use pitwall_proto::faults::{Kind, Labels};

use crate::support::{free_port, pitwall, pitwall_server_binary, run_ok};
use crate::web::{Browser, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn injected_faults_are_found_shown_and_scored() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = dir.path().join("faulty.parquet");
    // Laps 1-20 of the race, one fault of each kind.
    let out = run_ok(
        pitwall()
            .args(["faults", "inject", "--laps", "1-20", "--seed", "11"])
            .args(["--per-kind", "1", "--out", faulty.to_str().unwrap()]),
    );
    println!("{}", out.trim());
    let labels_file = dir.path().join("faulty.labels.json");
    let labels: Labels = serde_json::from_slice(&std::fs::read(&labels_file).unwrap()).unwrap();
    assert_eq!(labels.faults.len(), Kind::ALL.len(), "{:#?}", labels.faults);

    let (port, http) = (free_port(), free_port());
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut server = Command::new(pitwall_server_binary())
        .env("PITWALL_BUNDLED", &faulty)
        .args([
            "--embedded-once",
            "--embedded-speed",
            "60",
            "--checkpoint-ms",
            "700",
        ])
        .args(["--flight-addr", &format!("127.0.0.1:{port}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--data-dir", data.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    // The pit screen: alerts of every kind arrive while the race plays.
    let browser = Browser::start().await;
    wait_until(Duration::from_secs(60), "the dashboard", || async {
        browser
            .page
            .goto(&format!("http://127.0.0.1:{http}/"))
            .await
            .ok()
    })
    .await;
    let kinds = wait_until(Duration::from_secs(240), "alerts of every kind on the page", || async {
        let kinds = browser
            .js(
                "return [...document.querySelectorAll('#alerts li[data-severity]')].map((li) => li.dataset.kind)",
                vec![],
            )
            .await;
        let kinds: BTreeSet<String> = kinds
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(String::from))
            .collect();
        (kinds.len() >= Kind::ALL.len()).then_some(kinds)
    })
    .await;
    println!("the alert list shows kinds {kinds:?}");
    for kind in Kind::ALL {
        assert!(
            kinds.contains(kind.name()),
            "no {} alert on the page",
            kind.name()
        );
    }
    browser.screenshot("dashboard-alerts").await;
    browser.close().await;

    // The same stream from the command line.
    let server_url = format!("http://127.0.0.1:{port}");
    let watched = run_ok(
        pitwall()
            .args(["--server", &server_url, "watch", "alerts"])
            .args(["--from-start", "--limit", "3", "--format", "csv"]),
    );
    println!("pitwall watch alerts:\n{}", watched.trim());
    assert!(watched.lines().count() >= 4, "{watched}");

    // Scored from the archive: every fault found.
    let json = run_ok(
        pitwall()
            .args(["--server", &server_url, "faults", "score"])
            .args([
                "--labels",
                labels_file.to_str().unwrap(),
                "--json",
                "--wait",
                "300",
            ]),
    );
    let report: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let table = run_ok(
        pitwall()
            .args(["--server", &server_url, "faults", "score"])
            .args(["--labels", labels_file.to_str().unwrap()]),
    );
    println!("{}", table.trim());
    for k in report["kinds"].as_array().unwrap() {
        if k["faults"].as_u64() == Some(0) {
            continue;
        }
        assert_eq!(k["recall"].as_f64(), Some(1.0), "{k}");
        assert!(k["precision"].as_f64().unwrap() >= 0.5, "{k}");
    }
    assert!(report["false_alerts"].as_u64().unwrap() <= 1, "{report}");
    assert!(pitwall_cli::process::terminate(
        &mut server,
        Duration::from_secs(60)
    ));
}
