//! The dashboard end to end: a real Chromium on the page while the bundled race goes through
//! the real broker into a `pitwall-server` process (killed and started again under the page),
//! the HTTP API's answers to bad input and missing tokens, 200 tabs reconnecting, and
//! `/metrics` parsed as Prometheus does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int32Type, TimestampMillisecondType};
use pitwall_cli::client::Client;
use serde_json::{Value, json};

use crate::support::*;
use crate::web::{Browser, Events, Http, wait_until};

/// The bundled race's laps 1..=`last_lap`, cut where the first car starts each lap of `cuts`,
/// as Parquet files `pitwall replay --file` sends one after the other.
fn race_parts(dir: &Path, last_lap: i32, cuts: &[i32]) -> Vec<PathBuf> {
    let rows = session_rows(last_lap);
    let lap = rows
        .column_by_name("lap")
        .unwrap()
        .as_primitive::<Int32Type>();
    let ts = rows
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    let start_of = |l: i32| {
        (0..rows.num_rows())
            .filter(|&i| lap.is_valid(i) && lap.value(i) == l)
            .map(|i| ts.value(i))
            .min()
            .unwrap()
    };
    let mut bounds = vec![i64::MIN];
    bounds.extend(cuts.iter().map(|&l| start_of(l)));
    bounds.push(i64::MAX);
    bounds
        .windows(2)
        .enumerate()
        .map(|(n, w)| {
            let keep: BooleanArray = ts
                .iter()
                .map(|t| t.map(|t| t >= w[0] && t < w[1]))
                .collect();
            let part = filter_record_batch(&rows, &keep).unwrap();
            let path = dir.join(format!("part{n}.parquet"));
            let mut writer = parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(&path).unwrap(),
                part.schema(),
                None,
            )
            .unwrap();
            writer.write(&part).unwrap();
            writer.close().unwrap();
            path
        })
        .collect()
}

async fn count(client: &mut Client, sql_text: &str) -> i64 {
    let b: Vec<RecordBatch> = sql(client, sql_text).await;
    b.first()
        .map(|b| {
            b.column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0)
        })
        .unwrap_or(0)
}

/// Lap rows on the page, by key (session|car|lap).
async fn page_laps(b: &Browser) -> Vec<String> {
    b.js(
        "return [...document.querySelectorAll('#lap-table tbody tr[data-key]')].map(r => r.dataset.key)",
        vec![],
    )
    .await
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_str().unwrap().to_string())
    .collect()
}

fn set_param(port: u16, query: &str, param: &str) {
    run_ok(pitwall().args([
        "--server",
        &format!("http://127.0.0.1:{port}"),
        "set",
        query,
        param,
    ]));
}

/// Moves the threshold slider as a user would (its `input` event) and reads the flagged count.
async fn slide(b: &Browser, value: i64) -> (i64, i64) {
    let v = b
        .js(
            "const s = document.querySelector('#threshold'); s.value = arguments[0];
             s.dispatchEvent(new Event('input', {bubbles: true}));
             return [Number(s.value), Number(document.querySelector('#flagged-count').textContent)]",
            vec![json!(value)],
        )
        .await;
    (v[0].as_i64().unwrap(), v[1].as_i64().unwrap())
}

#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, its steps in the order a user takes them; to be split into named steps"
)]
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_chromium_follows_a_race_through_a_restart() {
    let browser = Browser::start().await;
    let bootstrap = broker();
    let topic = unique("dash");
    create_topic(&bootstrap, &topic, 4).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let parts = race_parts(dir.path(), 12, &[6, 8, 10]);
    let group = unique("group");
    let (port, http_port) = (free_port(), free_port());
    let start = || ServerProcess::start_on(port, http_port, &bootstrap, &topic, &group, &data, &[]);
    let server = start();
    let mut client = server.client().await;
    set_param(port, "over_rev", "threshold=99999");
    browser
        .page
        .goto(&format!("http://127.0.0.1:{http_port}/"))
        .await
        .unwrap();

    // 1. Lap rows for three cars within 60 s of the replay's start.
    let started = Instant::now();
    replay(&bootstrap, &topic, &["--file", parts[0].to_str().unwrap()]);
    let cars = wait_until(Duration::from_secs(60), "lap rows of 3 cars", || async {
        let cars: BTreeSet<String> = page_laps(&browser)
            .await
            .iter()
            .map(|k| k.split('|').nth(1).unwrap().to_string())
            .collect();
        (cars.len() >= 3).then_some(cars)
    })
    .await;
    println!(
        "lap rows of {} cars on the page {:.1} s after the replay started",
        cars.len(),
        started.elapsed().as_secs_f64()
    );

    // 2. The slider flags exactly the lap_anomaly rows above its value.
    let scored = "SELECT count(*) FROM lap_anomaly WHERE anomaly_score IS NOT NULL";
    // Every lap of the part has closed once the count stays the same past the lap gap (3 s).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut steady: Option<(i64, Instant)> = None;
    let total = loop {
        let (_, flagged) = slide(&browser, 0).await;
        let above_zero = count(
            &mut client,
            "SELECT count(*) FROM lap_anomaly WHERE anomaly_score > 0",
        )
        .await;
        let n = count(&mut client, scored).await;
        let same = n > 0 && flagged == above_zero;
        match steady {
            Some((m, since)) if same && m == n && since.elapsed() > Duration::from_secs(5) => {
                break n;
            }
            Some((m, _)) if same && m == n => {}
            _ => steady = same.then(|| (n, Instant::now())),
        }
        assert!(
            Instant::now() < deadline,
            "waited 90 s for every lap_anomaly row on the page"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let scores: Vec<f64> = sql(
        &mut client,
        "SELECT anomaly_score FROM lap_anomaly WHERE anomaly_score IS NOT NULL ORDER BY 1",
    )
    .await
    .iter()
    .flat_map(|b| {
        b.column(0)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .values()
            .to_vec()
    })
    .collect();
    for q in [0.25, 0.5, 0.9] {
        let value = scores[(scores.len() as f64 * q) as usize].floor() as i64;
        let (set, flagged) = slide(&browser, value).await;
        assert_eq!(set, value, "the slider took the value");
        let want = count(
            &mut client,
            &format!("SELECT count(*) FROM lap_anomaly WHERE anomaly_score > {value}"),
        )
        .await;
        assert_eq!(flagged, want, "threshold {value}: flagged laps on the page");
        println!(
            "slider at {value}: {flagged} of {total} laps flagged, as many as lap_anomaly rows above it"
        );
    }
    // 3. `pitwall set over_rev threshold=...` makes over-rev alerts appear (the rows of the
    //    over_rev query are listed when the box says so; the `alerts` stream always is).
    browser.click("#alerts-routine").await;
    assert_eq!(browser.count("#alerts li[data-kind=over_rev]").await, 0);
    set_param(port, "over_rev", "threshold=11000");
    replay(&bootstrap, &topic, &["--file", parts[1].to_str().unwrap()]);
    let alerts = wait_until(Duration::from_secs(30), "an over-rev alert", || async {
        let n = browser.count("#alerts li[data-kind=over_rev]").await;
        (n > 0).then_some(n)
    })
    .await;
    println!("after `pitwall set over_rev threshold=11000`: {alerts} over-rev alerts");
    browser.click("#car-chips .chip[data-driver=VER]").await;
    browser.click("#car-chips .chip[data-driver=HAM]").await;
    assert!(
        browser
            .page
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains("cars=VER%2CHAM")
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    browser.screenshot("dashboard-live").await;
    browser.click("#car-chips .chip[data-driver=VER]").await;
    browser.click("#car-chips .chip[data-driver=HAM]").await;

    // 4. The server killed and started again under the page.
    server.kill9();
    wait_until(
        Duration::from_secs(15),
        "the page to say it is reconnecting",
        || async { (browser.connection().await == "reconnecting").then_some(()) },
    )
    .await;
    let server = start();
    let mut client = server.client().await;
    wait_until(
        Duration::from_secs(30),
        "the page to be live again",
        || async { (browser.connection().await == "live").then_some(()) },
    )
    .await;
    replay(&bootstrap, &topic, &["--file", parts[2].to_str().unwrap()]);
    // A server killed with -9 leaves its consumer in the group until the broker's session
    // timeout (45 s) expires; only then are the partitions assigned to the new one.
    let restarted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(150);
    let laps = loop {
        let keys = page_laps(&browser).await;
        let archived = count(
            &mut client,
            "SELECT count(*) FROM archive.results_lap_stats",
        )
        .await;
        let top = keys
            .iter()
            .filter_map(|k| k.rsplit('|').next()?.parse::<i32>().ok())
            .max();
        if top >= Some(9) && keys.len() as i64 == archived {
            break keys;
        }
        assert!(
            Instant::now() < deadline,
            "waited 150 s for the page's laps ({}, up to lap {top:?}) to equal the archive's ({archived})",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let unique_keys: BTreeSet<&String> = laps.iter().collect();
    assert_eq!(unique_keys.len(), laps.len(), "a lap row shown twice");
    println!(
        "after kill -9 and a restart: reconnecting, then live; laps 8-9 on the page {:.0} s after \
         their replay (the killed consumer holds its partitions until the session timeout); \
         {} lap rows, none twice, as many as archive.results_lap_stats",
        restarted.elapsed().as_secs_f64(),
        laps.len()
    );

    // 5. A query submitted at run time shows in the generic view.
    let file = dir.path().join("top_speed.sql");
    std::fs::write(
        &file,
        "SELECT session, driver, lap, ts, speed FROM telemetry WHERE speed > 310",
    )
    .unwrap();
    run_ok(pitwall().args([
        "--server",
        &format!("http://127.0.0.1:{port}"),
        "submit",
        "top_speed",
        file.to_str().unwrap(),
    ]));
    browser.click("#tab-queries").await;
    wait_until(
        Duration::from_secs(15),
        "top_speed in the query list",
        || async {
            (browser.count("#query-select option[value=top_speed]").await == 1).then_some(())
        },
    )
    .await;
    browser.select("#query-select", "top_speed").await;
    replay(&bootstrap, &topic, &["--file", parts[3].to_str().unwrap()]);
    let rows = wait_until(
        Duration::from_secs(30),
        "top_speed rows in the generic view",
        || async {
            let n = browser.count("#generic-table tbody tr").await;
            (n > 0).then_some(n)
        },
    )
    .await;
    assert!(browser.text("#generic-table thead").await.contains("speed"));
    println!("run-time query top_speed: {rows} rows in the generic view");
    browser.screenshot("dashboard-queries").await;

    // 6. The race from the archive, through the session selector.
    browser.click("#tab-race").await;
    assert!(
        browser
            .js("return document.querySelector('#map-panel').hidden", vec![])
            .await
            == json!(true),
        "no x/y in the bundled race: no track map"
    );
    // The last laps of the replay close and are archived within seconds: wait until the
    // archive holds still for 5 s, so that the session opened is the whole of it.
    let sql_archived =
        "SELECT count(*) FROM archive.results_lap_stats WHERE session = '2023-british-gp-race'";
    let mut archived = count(&mut client, sql_archived).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = count(&mut client, sql_archived).await;
        if now == archived {
            break;
        }
        archived = now;
        assert!(
            Instant::now() < deadline,
            "the archive kept growing for 60 s"
        );
    }
    wait_until(
        Duration::from_secs(30),
        "the archived session in the selector",
        || async {
            // Opening the selector asks the server for the archived sessions.
            browser
                .js("document.querySelector('#session-select').blur()", vec![])
                .await;
            browser
                .js("document.querySelector('#session-select').focus()", vec![])
                .await;
            let n = browser
                .count("#session-select option[value='2023-british-gp-race']")
                .await;
            (n == 1).then_some(())
        },
    )
    .await;
    browser
        .select("#session-select", "2023-british-gp-race")
        .await;
    wait_until(
        Duration::from_secs(30),
        "the archived session to open",
        || async {
            let url = browser.page.current_url().await.unwrap();
            url.as_str()
                .contains("session=2023-british-gp-race")
                .then_some(())
        },
    )
    .await;
    let shown = page_laps(&browser).await.len() as i64;
    assert_eq!(shown, archived, "lap rows of the archived session");
    println!(
        "archived session 2023-british-gp-race: {shown} lap rows from the archive (it holds {archived})"
    );

    // 7. Telemetry with positions: the track map appears, with a dot per car.
    browser.select("#session-select", "").await;
    let xy = circuit_file(dir.path());
    replay(&bootstrap, &topic, &["--file", xy.to_str().unwrap()]);
    wait_until(Duration::from_secs(30), "the track map", || async {
        let shown = browser
            .js(
                "return !document.querySelector('#map-panel').hidden",
                vec![],
            )
            .await;
        (shown == json!(true)).then_some(())
    })
    .await;
    browser.click("#car-chips .chip[data-driver=XYA]").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let painted = browser
        .js(
            "const c = document.querySelector('#track-map');
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n",
            vec![],
        )
        .await
        .as_i64()
        .unwrap();
    assert!(painted > 500, "the map drew {painted} pixels");
    println!("telemetry with x/y: the track map shows ({painted} pixels drawn)");
    browser.screenshot("dashboard-track-map").await;
    browser.close().await;
    server.stop();
}

/// A game's cars on the track map: a session with positions played as F1 25 packets into
/// `pitwall-server --udp` (no broker) moves its cars' dots, as the canvas's label tells.
#[tokio::test(flavor = "multi_thread")]
async fn game_packets_move_the_cars_on_the_track_map() {
    let browser = Browser::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (udp, http) = (free_port(), free_port());
    let data = dir.path().join("data");
    let http_addr = format!("127.0.0.1:{http}");
    let app = start_server(crate::udp::udp_server_args(udp, &http_addr, &data)).await;
    browser
        .page
        .goto(&format!("http://127.0.0.1:{http}/"))
        .await
        .unwrap();
    let xy = circuit_file(dir.path());
    let play = std::thread::spawn(move || {
        let to = format!("127.0.0.1:{udp}");
        let args = ["udp", "play", "--from-session", "--speed", "2", "--to", &to];
        run_ok(pitwall().args(args).args(["--file", xy.to_str().unwrap()]))
    });
    let positions = || async {
        let label = browser
            .js(
                "return document.querySelector('#map-panel').hidden ? '' : document.querySelector('#track-map').getAttribute('aria-label')",
                vec![],
            )
            .await;
        let label = label.as_str().unwrap_or_default().to_string();
        let cars: std::collections::BTreeMap<String, (f64, f64)> = label
            .strip_prefix("Track map: ")
            .unwrap_or_default()
            .split("; ")
            .filter_map(|car| {
                let (driver, xy) = car.split_once(' ')?;
                let (x, y) = xy.split_once(',')?;
                Some((driver.to_string(), (x.parse().ok()?, y.parse().ok()?)))
            })
            .collect();
        cars
    };
    let first = wait_until(Duration::from_secs(30), "both cars on the map", || async {
        let cars = positions().await;
        (cars.len() == 2).then_some(cars)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = positions().await;
    for (driver, (x0, y0)) in &first {
        let (x1, y1) = second[driver];
        let moved = (x1 - x0).hypot(y1 - y0);
        println!("{driver}: ({x0}, {y0}) then ({x1}, {y1}): moved {moved:.0} m in 1.5 s");
        assert!(moved > 100.0, "{driver} moved {moved:.0} m");
    }
    browser.screenshot("dashboard-track-map-udp").await;
    println!("{}", play.join().unwrap().trim());
    browser.close().await;
    app.stop().await;
}

/// Two cars going round a circle (x/y in the schema's position columns), later than the race:
/// a session with positions, as the F1 games send.
fn circuit_file(dir: &Path) -> PathBuf {
    use arrow::array::{
        ArrayRef, Float32Array, Int8Array, Int32Array, StringArray, TimestampMillisecondArray,
    };
    let schema = pitwall_proto::schema::telemetry_schema();
    let n = 600;
    let (mut drivers, mut ts, mut x, mut y, mut speed) = (vec![], vec![], vec![], vec![], vec![]);
    let start = 1_700_000_000_000_i64;
    for i in 0..n {
        for (d, phase) in [("XYA", 0.0_f32), ("XYB", 1.5)] {
            let a = i as f32 / 100.0 + phase;
            drivers.push(d);
            ts.push(start + i as i64 * 100);
            x.push(4000.0 * a.cos());
            y.push(2500.0 * a.sin());
            speed.push(200.0 + 100.0 * (2.0 * a).sin());
        }
    }
    let rows = drivers.len();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "session" => Arc::new(StringArray::from(vec!["xy-circuit"; rows])),
                "driver" => Arc::new(StringArray::from(drivers.clone())),
                "lap" => Arc::new(Int32Array::from(vec![1; rows])),
                "ts" => Arc::new(TimestampMillisecondArray::from(ts.clone()).with_timezone("UTC")),
                "x" => Arc::new(Float32Array::from(x.clone())),
                "y" => Arc::new(Float32Array::from(y.clone())),
                "speed" => Arc::new(Float32Array::from(speed.clone())),
                "rpm" => Arc::new(Float32Array::from(vec![10_000.0; rows])),
                "gear" => Arc::new(Int8Array::from(vec![6; rows])),
                _ => arrow::array::new_null_array(f.data_type(), rows),
            }
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let path = dir.join("circuit.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_the_page_asks_for_it_and_the_api_refuses_without_it() {
    let token = "s3cret-pit-token";
    let app = embedded_server(&["--token", token, "--embedded-speed", "20"]).await;
    let addr = app.http_addr.unwrap();
    let anonymous = Http::new(addr, None);
    let wrong = Http::new(addr, Some("not-it"));
    for path in [
        "/api/queries",
        "/api/live",
        "/api/sessions",
        "/metrics",
        "/api/queries/over_rev",
    ] {
        let (status, body) = anonymous.get(path).await;
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert_eq!(body.lines().count(), 1, "one line: {body}");
        assert_eq!(wrong.get(path).await.0, 401, "{path} with a wrong token");
    }
    let (status, _) = anonymous
        .call(
            "POST",
            "/api/queries/lap_anomaly/params",
            r#"{"threshold": 1}"#,
        )
        .await;
    assert_eq!(status, 401, "changing a parameter needs the token");
    assert_eq!(anonymous.get("/").await.0, 200, "the login page is served");
    let good = Http::new(addr, Some(token));
    assert_eq!(good.get("/api/queries").await.0, 200);
    println!("no token / wrong token: 401 on every API path and /metrics; the page itself: 200");

    let browser = Browser::start().await;
    browser.page.goto(&format!("http://{addr}/")).await.unwrap();
    wait_until(Duration::from_secs(15), "the token dialog", || async {
        let open = browser
            .js("return document.querySelector('#login').open", vec![])
            .await;
        (open == Value::Bool(true)).then_some(())
    })
    .await;
    browser
        .page
        .find(fantoccini::Locator::Css("#login-token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    browser.click("#login-submit").await;
    wait_until(
        Duration::from_secs(20),
        "the page to be live after signing in",
        || async { (browser.connection().await == "live").then_some(()) },
    )
    .await;
    let stored = browser
        .js("return sessionStorage.getItem('pitwall-token')", vec![])
        .await;
    assert_eq!(stored, json!(token), "kept in the session storage");
    println!("the page asked for the token once, then went live");

    // The slider's value stored on the server, for every screen and Flight subscriber.
    assert_eq!(
        browser.text("#threshold-value").await,
        "500.0",
        "the server's threshold"
    );
    slide(&browser, 321).await;
    browser.click("#threshold-apply").await;
    let stored = wait_until(
        Duration::from_secs(10),
        "the threshold on the server",
        || async {
            let (_, body) = good.get("/api/queries/lap_anomaly").await;
            let info: Value = serde_json::from_str(&body).unwrap();
            let t = info["params"]["threshold"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (t == "321").then_some(t)
        },
    )
    .await;
    assert!(browser.text("#threshold-msg").await.contains("stored"));
    println!("Apply to all screens: lap_anomaly's threshold is {stored} on the server");
    browser.close().await;
    app.stop().await;
}

#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, its steps in the order a user takes them; to be split into named steps"
)]
#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_one_line_and_200_reconnecting_tabs_stay_bounded() {
    let app = embedded_server(&["--max-dashboards", "120", "--embedded-speed", "20"]).await;
    let http = Http::new(app.http_addr.unwrap(), None);
    for (method, path, body, want) in [
        ("GET", "/api/queries/nope", "", 404),
        ("GET", "/api/live?queries=lap_stats,nope", "", 404),
        ("GET", "/api/sessions/no-such-session", "", 404),
        ("GET", "/nothing/here", "", 404),
        ("GET", "/assets/nope.js", "", 404),
        ("GET", "/api/live?since=lap_stats:x", "", 400),
        ("POST", "/api/queries/over_rev/params", "not json", 400),
        (
            "POST",
            "/api/queries/over_rev/params",
            r#"{"nope": 1}"#,
            400,
        ),
        (
            "POST",
            "/api/queries/over_rev/params",
            r#"{"threshold": [1]}"#,
            400,
        ),
        (
            "POST",
            "/api/queries/nope/params",
            r#"{"threshold": 1}"#,
            404,
        ),
    ] {
        let (status, text) = http.call(method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {text}");
        assert_eq!(
            text.trim_end().lines().count(),
            1,
            "{method} {path}: one line: {text:?}"
        );
        println!("{method} {path} -> {status} {}", text.trim_end());
    }

    // A page that reconnects with its epoch and last sequence number gets exactly what it
    // missed, from the replay buffer: the next batch, nothing twice.
    let mut first = Events::new(
        http.send("GET", "/api/live?queries=speed_1s&traces=false", "")
            .await,
    );
    let (_, hello) = first.next().await.unwrap();
    let epoch = hello["epoch"].as_str().unwrap().to_string();
    let mut last = None;
    while last.is_none_or(|s: u64| s < 5) {
        let (kind, d) = first.next().await.unwrap();
        if kind == "rows" {
            last = d["seq"].as_u64();
        }
    }
    drop(first);
    let last = last.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // batches the page misses meanwhile
    let path =
        format!("/api/live?queries=speed_1s&traces=false&epoch={epoch}&since=speed_1s:{last}");
    let mut again = Events::new(http.send("GET", &path, "").await);
    let mut resumed = Vec::new();
    while resumed.len() < 5 {
        let (kind, d) = again.next().await.unwrap();
        if kind == "rows" {
            resumed.push(d["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(
        resumed,
        (last + 1..last + 6).collect::<Vec<_>>(),
        "resumed after seq {last}"
    );
    drop(again);
    println!("reconnected with since=speed_1s:{last}: the next batches were {resumed:?}");

    // One page that keeps up, from the start to the end.
    let steady = Events::new(
        http.send("GET", "/api/live?queries=speed_1s&traces=false", "")
            .await,
    );
    let steady = tokio::spawn(follow(steady, Duration::from_secs(40)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = metric(&http, "pitwall_resident_memory_bytes").await;

    // 200 tabs that open, read a little and go, in rounds; 20 that never read.
    let stalled: Vec<_> =
        futures::future::join_all((0..20).map(|_| http.send("GET", "/api/live", ""))).await;
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _round in 0..4 {
        let tabs = (0..50).map(|_| {
            let (http, refused) = (http.clone(), refused.clone());
            async move {
                let resp = http.send("GET", "/api/live", "").await;
                if resp.status().as_u16() == 503 {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                let mut events = Events::new(resp);
                for _ in 0..200 {
                    if events.next().await.is_none() {
                        break;
                    }
                }
            }
        });
        futures::future::join_all(tabs).await;
    }
    // More tabs than --max-dashboards at once: the rest are refused.
    let burst: Vec<_> =
        futures::future::join_all((0..110).map(|_| http.send("GET", "/api/live", ""))).await;
    let burst_refused = burst.iter().filter(|r| r.status().as_u16() == 503).count();
    assert!(
        burst_refused >= 10,
        "120 at most: {burst_refused} of 130 refused"
    );
    drop(burst);
    // The stalled tabs are dropped once their queues stay full.
    wait_until(
        Duration::from_secs(30),
        "the stalled tabs to be dropped",
        || async {
            let dropped = metric(
                &http,
                "pitwall_subscribers_dropped_total{kind=\"dashboard\"}",
            )
            .await;
            (dropped >= 20.0).then_some(())
        },
    )
    .await;
    drop(stalled);
    let open = wait_until(
        Duration::from_secs(20),
        "closed tabs to be let go",
        || async {
            let open = metric(&http, "pitwall_subscribers{kind=\"dashboard\"}").await;
            (open <= 1.0).then_some(open)
        },
    )
    .await;
    let rss_after = metric(&http, "pitwall_resident_memory_bytes").await;
    let (seqs, ended) = steady.await.unwrap();
    assert!(!ended, "the steady page was dropped");
    assert!(
        seqs.len() > 20,
        "the steady page got {} batches",
        seqs.len()
    );
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the steady page missed or repeated batches"
    );
    let grew_mb = (rss_after - rss_before) / 1e6;
    println!(
        "200 reconnecting tabs + 20 stalled + a burst of 110 ({burst_refused} refused at --max-dashboards 120): \
         {open} open after, RSS {:.0} -> {:.0} MB; the steady page got {} batches in order, none missed",
        rss_before / 1e6,
        rss_after / 1e6,
        seqs.len()
    );
    assert!(grew_mb < 200.0, "RSS grew {grew_mb:.0} MB");
    app.stop().await;
}

/// Follows a live stream for a while: the sequence numbers it got, and whether it was dropped.
async fn follow(mut events: Events, for_: Duration) -> (Vec<u64>, bool) {
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + for_;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => return (seqs, false),
            Ok(None) => return (seqs, true),
            Ok(Some((kind, d))) => match kind.as_str() {
                "rows" => seqs.push(d["seq"].as_u64().unwrap()),
                "dropped" | "gap" => return (seqs, true),
                _ => {}
            },
        }
    }
}

/// One sample's value from `/metrics` (`name` or `name{labels}` as the text has it).
async fn metric(http: &Http, sample: &str) -> f64 {
    let (status, text) = http.get("/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{sample} not in /metrics"))
}

/// Metric names the README lists (section "Metrics": every `pitwall_...` in backticks).
fn readme_metrics() -> BTreeSet<String> {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Metrics"))
        .expect("README has a Metrics section");
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("pitwall_"))
        .map(|s| s.split('{').next().unwrap().to_string())
        .collect()
}

/// One message that is not telemetry (a dead letter).
async fn produce_garbage(bootstrap: &str, topic: &str) {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .key("VER")
                .payload("{not json"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

fn total(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_rise_during_a_replay_and_are_all_in_the_readme() {
    let bootstrap = broker();
    let topic = unique("metrics");
    create_topic(&bootstrap, &topic, 4).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let app = start_server(server_args(
        &bootstrap,
        &topic,
        data.path(),
        &["--checkpoint-ms", "500"],
    ))
    .await;
    let http = Http::new(app.http_addr.unwrap(), None);
    let page = Events::new(http.send("GET", "/api/live?queries=lap_stats", "").await);
    // Before anything is produced (the server may take the whole replay in one go once it
    // has joined its group, so a snapshot taken "during" it can already hold every row).
    let first = parse_metrics(&http.get("/metrics").await.1);
    produce_garbage(&bootstrap, &topic).await;
    let replay_task = {
        let (b, t) = (bootstrap.clone(), topic.clone());
        tokio::task::spawn_blocking(move || replay(&b, &t, &["--laps", "1-3"]))
    };
    replay_task.await.unwrap();
    let produced = session_rows(3).num_rows() as f64;
    let last = wait_until(
        Duration::from_secs(60),
        "every row archived, in the metrics",
        || async {
            let s = parse_metrics(&http.get("/metrics").await.1);
            if total(&s, "pitwall_archive_rows_total") < produced {
                return None;
            }
            (total(&s, "pitwall_query_rows_out_total")
                > total(&first, "pitwall_query_rows_out_total")
                && total(&s, "pitwall_archive_checkpoints_total") > 0.0
                && total(&s, "pitwall_dead_letters_total") >= 1.0
                && total(&s, "pitwall_consumer_lag") >= 0.0
                && s.samples.iter().any(|x| x.metric == "pitwall_consumer_lag"))
            .then_some(s)
        },
    )
    .await;
    for name in [
        "pitwall_ingest_rows_total",
        "pitwall_ingest_messages_total",
        "pitwall_ingest_bytes_total",
        "pitwall_archive_rows_total",
    ] {
        assert!(
            total(&last, name) > total(&first, name),
            "{name} did not rise"
        );
        println!("{name}: {} -> {}", total(&first, name), total(&last, name));
    }
    assert_eq!(
        total(&last, "pitwall_subscribers") as i64,
        1,
        "the page's stream"
    );
    let scraped: BTreeSet<String> = last.samples.iter().map(|s| s.metric.clone()).collect();
    let listed = readme_metrics();
    let missing: Vec<_> = scraped.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "metrics not in the README's list: {missing:?}"
    );
    let absent: Vec<_> = listed.difference(&scraped).collect();
    assert!(
        absent.is_empty(),
        "README lists metrics /metrics does not have: {absent:?}"
    );
    println!("{} metric names, each in the README's list", scraped.len());
    drop(page);
    app.stop().await;
}
