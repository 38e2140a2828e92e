//! Arrow Flight against a running server: the `pitwall` CLI end to end, query replacement and
//! parameters under load, Flight SQL interoperability, auth, and slow subscribers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Float32Type;
use arrow_flight::decode::DecodedPayload;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables};
use futures::{StreamExt, TryStreamExt};
use pitwall_proto as pb;
use pitwall_server::engine::oracle::batch_result;
use tonic::transport::Channel;

use crate::engine::wait_until_done;
use crate::support::*;

/// A stream's next item, failing the test after 60 s without one: a bug must fail the suite,
/// not hang it.
async fn next_within<S: futures::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("no message for 60 s")
}

fn csv_lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(&mut buf);
        for b in batches {
            w.write(b).unwrap();
        }
    }
    let mut lines: Vec<String> = String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// `pitwall watch ...` as a child process whose stdout we read line by line.
fn watch(
    server: &str,
    args: &[&str],
) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = pitwall()
        .args(["--server", server, "watch"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_to_server_to_watch_lap_anomaly_csv_gives_every_lap() {
    let bootstrap = broker();
    let topic = unique("watch");
    create_topic(&bootstrap, &topic, 4).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let app = start_server(server_args(&bootstrap, &topic, data.path(), &[])).await;
    let rows = session_rows(4);
    let queries = pitwall_server::initial_queries(None).unwrap();
    let expected = csv_lines(&batch_result(&queries, "lap_anomaly", &rows).await.unwrap());
    let url = format!("http://{}", app.flight_addr);
    let limit = expected.len().to_string();
    let (mut child, mut lines) =
        watch(&url, &["lap_anomaly", "--format", "csv", "--limit", &limit]);
    // The header comes as soon as the subscription is up: only then start publishing.
    let header = tokio::task::spawn_blocking(move || {
        let h = lines.next().unwrap().unwrap();
        (h, lines)
    });
    let (header, lines) = tokio::time::timeout(Duration::from_secs(60), header)
        .await
        .expect("no header from pitwall watch in 60 s")
        .unwrap();
    assert_eq!(
        header,
        "session,driver,lap,mean_speed,mean_rpm,anomaly_score,is_anomaly"
    );
    replay(&bootstrap, &topic, &["--laps", "1-4"]);
    let got = tokio::task::spawn_blocking(move || {
        let mut v: Vec<String> = lines.map(|l| l.unwrap()).collect();
        v.sort();
        v
    });
    // `--limit` ends the watch; a bug that keeps it open fails here instead of hanging.
    let got = tokio::time::timeout(Duration::from_secs(120), got)
        .await
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("pitwall watch still running after 120 s")
        })
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "pitwall watch failed");
    assert!(got.len() >= 20 * 4, "a row per car and lap");
    assert_eq!(got, expected);
    println!(
        "lap_anomaly over laps 1-4: {} rows over `pitwall watch --format csv`, equal to batch",
        got.len()
    );
    app.stop().await;
}

/// Rows of `over_rev` as (received after the marker?, rpm) while replaying at a pace.
async fn paced_replay(bootstrap: &str, topic: &str, laps: &str, speed: &str) -> Child {
    pitwall()
        .args([
            "replay",
            "--brokers",
            bootstrap,
            "--topic",
            topic,
            "--laps",
            laps,
            "--speed",
            speed,
            "--quiet",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_under_load_keeps_subscribers_and_other_queries() {
    let bootstrap = broker();
    let topic = unique("replace");
    create_topic(&bootstrap, &topic, 4).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let app = start_server(server_args(&bootstrap, &topic, data.path(), &[])).await;
    let mut control = client(&app, None).await;
    let mut sub = client(&app, None).await;
    let mut other = client(&app, None).await;
    let ticket = |q: &str| pb::SubscribeTicket {
        query: q.into(),
        from_buffer_start: false,
        driver: String::new(),
    };
    let mut over_rev = sub
        .subscribe(&ticket("over_rev"))
        .await
        .unwrap()
        .into_inner();
    let mut speed = other
        .subscribe(&ticket("speed_1s"))
        .await
        .unwrap()
        .into_inner();
    let mut replay = paced_replay(&bootstrap, &topic, "1-2", "25").await;
    // Some rows of the original query first.
    let mut before = 0;
    while before < 20 {
        if let DecodedPayload::RecordBatch(b) =
            next_within(&mut over_rev).await.unwrap().unwrap().payload
        {
            before += b.num_rows();
        }
    }
    let file = data.path().join("v2.sql");
    std::fs::write(
        &file,
        "SELECT session, driver, ts, rpm, 'v2' AS version FROM telemetry WHERE rpm > 11000",
    )
    .unwrap();
    let url = format!("http://{}", app.flight_addr);
    let out = run_ok(pitwall().args([
        "replace",
        "over_rev",
        file.to_str().unwrap(),
        "--server",
        &url,
    ]));
    assert!(out.contains("replaced over_rev"), "{out}");
    // Same stream: a new schema, then the new query's rows.
    let (mut new_schema, mut after) = (false, 0);
    while after < 20 {
        match next_within(&mut over_rev)
            .await
            .expect("stream still open")
            .unwrap()
            .payload
        {
            DecodedPayload::Schema(s) => new_schema |= s.index_of("version").is_ok(),
            DecodedPayload::RecordBatch(b) if b.schema().index_of("version").is_ok() => {
                assert!(
                    new_schema,
                    "the schema change is signalled before the new rows"
                );
                assert!(
                    b.column_by_name("version")
                        .unwrap()
                        .as_string::<i32>()
                        .iter()
                        .all(|v| v == Some("v2"))
                );
                after += b.num_rows();
            }
            _ => {}
        }
    }
    // The other subscriber was never interrupted.
    let mut speed_rows = 0;
    let started = Instant::now();
    while speed_rows == 0 && started.elapsed() < Duration::from_secs(30) {
        if let DecodedPayload::RecordBatch(b) =
            next_within(&mut speed).await.unwrap().unwrap().payload
        {
            speed_rows += b.num_rows();
        }
    }
    assert!(speed_rows > 0);
    assert!(
        tokio::task::spawn_blocking(move || replay.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    // Window state of the unaffected queries is intact: their results equal the batch result.
    let rows = session_rows(2);
    wait_until_done(&mut control, rows.num_rows() as u64).await;
    for q in ["speed_1s", "lap_stats", "lap_anomaly", "lock_up"] {
        let queries = pitwall_server::initial_queries(None).unwrap();
        let streamed = sql(&mut control, &format!("SELECT * FROM {q}")).await;
        let batch = batch_result(&queries, q, &rows).await.unwrap();
        pitwall_server::engine::oracle::assert_same_rows(
            q,
            &pitwall_server::engine::oracle::canonical_rows(&streamed),
            &pitwall_server::engine::oracle::canonical_rows(&batch),
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn set_parameter_changes_what_a_running_subscriber_receives() {
    let bootstrap = broker();
    let topic = unique("param");
    create_topic(&bootstrap, &topic, 4).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let app = start_server(server_args(&bootstrap, &topic, data.path(), &[])).await;
    let mut sub = client(&app, None).await;
    let ticket = pb::SubscribeTicket {
        query: "over_rev".into(),
        from_buffer_start: false,
        driver: String::new(),
    };
    let mut stream = sub.subscribe(&ticket).await.unwrap().into_inner();
    let mut replay = paced_replay(&bootstrap, &topic, "1-3", "25").await;
    let rpms = |b: &RecordBatch| {
        b.column_by_name("rpm")
            .unwrap()
            .as_primitive::<Float32Type>()
            .values()
            .to_vec()
    };
    let mut before = Vec::new();
    while before.len() < 30 {
        if let DecodedPayload::RecordBatch(b) =
            next_within(&mut stream).await.unwrap().unwrap().payload
        {
            before.extend(rpms(&b));
        }
    }
    assert!(
        before.iter().all(|r| *r > 11800.0),
        "default threshold 11800"
    );
    let url = format!("http://{}", app.flight_addr);
    let out = run_ok(pitwall().args(["--server", &url, "set", "over_rev", "threshold=11500"]));
    assert!(out.contains("threshold=11500"), "{out}");
    let mut after = Vec::new();
    let started = Instant::now();
    while !after.iter().any(|r| *r <= 11800.0) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no row between 11500 and 11800 after the change"
        );
        if let DecodedPayload::RecordBatch(b) =
            next_within(&mut stream).await.unwrap().unwrap().payload
        {
            after.extend(rpms(&b));
        }
    }
    assert!(after.iter().all(|r| *r > 11500.0));
    println!(
        "over_rev: {} rows before the change (min rpm {}), rows after include rpm {}",
        before.len(),
        before.iter().cloned().fold(f32::MAX, f32::min),
        after.iter().cloned().fold(f32::MAX, f32::min)
    );
    replay.kill().ok();
    replay.wait().ok();
    app.stop().await;
}

async fn sql_client(
    app: &pitwall_server::RunningApp,
    token: Option<&str>,
) -> FlightSqlServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.flight_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = FlightSqlServiceClient::new(channel);
    if let Some(t) = token {
        c.set_token(t.to_string());
    }
    c
}

async fn fetch(
    c: &mut FlightSqlServiceClient<Channel>,
    info: arrow_flight::FlightInfo,
) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for e in info.endpoint {
        let stream = c.do_get(e.ticket.unwrap()).await.unwrap();
        out.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    out
}

fn strings(batches: &[RecordBatch], col: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(col)
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap_or("").to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, its steps in the order a user takes them; to be split into named steps"
)]
#[tokio::test(flavor = "multi_thread")]
async fn flight_sql_clients_browse_query_and_prepare() {
    // No merges: the statement planned below keeps its view of the archive's files.
    let app = embedded_server(&[
        "--compact-min-files",
        "100000",
        "--compact-idle-secs",
        "3600",
    ])
    .await;
    let mut c = sql_client(&app, None).await;
    // Let some results accumulate.
    let started = Instant::now();
    loop {
        let info = c
            .execute("SELECT count(*) AS n FROM speed_1s".into(), None)
            .await
            .unwrap();
        let b = fetch(&mut c, info).await;
        if b[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
            > 100
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A statement is planned once, for its FlightInfo, and DoGet runs that plan: it counts the
    // archive as of then, even after more rows were archived. Its ticket fetched a second
    // time is planned again and counts them.
    let count = "SELECT count(*) AS n FROM archive.telemetry";
    let n = |b: Vec<RecordBatch>| {
        b[0].column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    };
    let started = Instant::now();
    // The archive's first files come with the first checkpoint.
    while c.execute(count.into(), None).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the archive is there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = c.execute(count.into(), None).await.unwrap();
    let ticket = held.endpoint[0].ticket.clone().unwrap();
    let info = c.execute(count.into(), None).await.unwrap();
    let at_info = n(fetch(&mut c, info).await);
    let later = loop {
        let info = c.execute(count.into(), None).await.unwrap();
        let now = n(fetch(&mut c, info).await);
        if now > at_info {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the archive grows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stream = c.do_get(ticket.clone()).await.unwrap();
    let first = n(stream.try_collect().await.unwrap());
    assert!(
        first <= at_info,
        "planned for its FlightInfo: {first} > {at_info}"
    );
    let stream = c.do_get(ticket).await.unwrap();
    let again = n(stream.try_collect().await.unwrap());
    assert!(
        again >= later,
        "fetched again, planned afresh: {again} < {later}"
    );
    let info = c.get_catalogs().await.unwrap();
    assert_eq!(
        strings(&fetch(&mut c, info).await, "catalog_name"),
        vec!["pitwall"]
    );
    let info = c
        .get_db_schemas(CommandGetDbSchemas {
            catalog: Some("pitwall".into()),
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    assert!(strings(&fetch(&mut c, info).await, "db_schema_name").contains(&"live".to_string()));
    let info = c
        .get_tables(CommandGetTables {
            catalog: Some("pitwall".into()),
            db_schema_filter_pattern: Some("live".into()),
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let tables = strings(&fetch(&mut c, info).await, "table_name");
    for q in [
        "lap_anomaly",
        "lap_stats",
        "lock_up",
        "over_rev",
        "speed_1s",
    ] {
        assert!(tables.contains(&q.to_string()), "{q} in {tables:?}");
    }
    let info = c
        .execute(
            "SELECT driver, max(max_speed) AS top FROM speed_1s GROUP BY driver ORDER BY top DESC"
                .into(),
            None,
        )
        .await
        .unwrap();
    let b = fetch(&mut c, info).await;
    assert_eq!(
        b.iter().map(|b| b.num_rows()).sum::<usize>(),
        20,
        "20 drivers"
    );
    // A prepared statement with a parameter.
    let mut stmt = c
        .prepare(
            "SELECT driver, rpm FROM over_rev WHERE rpm > $1".into(),
            None,
        )
        .await
        .unwrap();
    let param = RecordBatch::try_from_iter([(
        "$1",
        std::sync::Arc::new(arrow::array::Float64Array::from(vec![12_000.0])) as _,
    )])
    .unwrap();
    stmt.set_parameters(param).unwrap();
    let info = stmt.execute().await.unwrap();
    let b = fetch(&mut c, info).await;
    let rpm: Vec<f32> = b
        .iter()
        .flat_map(|b| {
            b.column_by_name("rpm")
                .unwrap()
                .as_primitive::<Float32Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert!(rpm.iter().all(|r| *r > 12_000.0));
    stmt.close().await.unwrap();
    // Garbage from a client is an error for that client, nothing more.
    let mut raw = arrow_flight::FlightClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", app.flight_addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    assert!(
        raw.do_get(arrow_flight::Ticket::new(vec![0xff, 0x13, 0x37]))
            .await
            .is_err()
    );
    assert!(
        raw.do_action(arrow_flight::Action::new("submit", vec![1, 2, 3]))
            .await
            .is_err()
    );
    let info = c.execute("SELECT 1 AS alive".into(), None).await.unwrap();
    assert_eq!(fetch(&mut c, info).await[0].num_rows(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_required_and_client_sql_stays_read_only() {
    let app = embedded_server(&["--token", "s3cret"]).await;
    let mut anonymous = sql_client(&app, None).await;
    let err = anonymous
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("authentication credentials") && err.contains("missing authorization"),
        "{err}"
    );
    let mut wrong = sql_client(&app, Some("guess")).await;
    let err = wrong
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid token"), "{err}");
    let out = run(pitwall().args([
        "--server",
        &format!("http://{}", app.flight_addr),
        "queries",
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));
    run_ok(pitwall().args([
        "queries",
        "--server",
        &format!("http://{}", app.flight_addr),
        "--token",
        "s3cret",
    ]));
    let mut c = sql_client(&app, Some("s3cret")).await;
    let info = c.execute("SELECT 1 AS one".into(), None).await.unwrap();
    assert_eq!(fetch(&mut c, info).await[0].num_rows(), 1);
    for sql in [
        "DROP TABLE speed_1s",
        "INSERT INTO speed_1s VALUES (1)",
        "COPY speed_1s TO '/tmp/stolen.parquet'",
        "CREATE TABLE t AS SELECT 1",
    ] {
        let err = c.execute(sql.into(), None).await.unwrap_err().to_string();
        assert!(
            err.contains("invalid argument") && err.contains("refused"),
            "{sql}: {err}"
        );
    }
    assert!(!std::path::Path::new("/tmp/stolen.parquet").exists());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_is_dropped_and_the_others_keep_up() {
    let app = embedded_server(&["--embedded-speed", "400", "--subscriber-buffer", "8"]).await;
    let ticket = pb::SubscribeTicket {
        query: "speed_1s".into(),
        from_buffer_start: false,
        driver: String::new(),
    };
    let mut slow = client(&app, None).await;
    let mut slow_stream = slow.subscribe(&ticket).await.unwrap().into_inner();
    let mut fast = client(&app, None).await;
    let mut fast_stream = fast.subscribe(&ticket).await.unwrap().into_inner();
    // The fast one reads while the slow one never does.
    let mut control = client(&app, None).await;
    let started = Instant::now();
    let mut fast_rows = 0;
    loop {
        if let DecodedPayload::RecordBatch(b) = next_within(&mut fast_stream)
            .await
            .unwrap()
            .unwrap()
            .payload
        {
            fast_rows += b.num_rows();
        }
        let s = crate::engine::stats(&mut control).await;
        if s.subscribers_dropped >= 1 && fast_rows > 5_000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the slow subscriber was never dropped"
        );
    }
    // The slow one gets what was buffered, then the reason it was dropped.
    let mut ended = None;
    while let Some(item) = next_within(&mut slow_stream).await {
        if let Err(e) = item {
            ended = Some(e.to_string());
            break;
        }
    }
    let ended = ended.expect("the slow stream ends with an error");
    assert!(ended.contains("too slow"), "{ended}");
    println!("fast subscriber: {fast_rows} rows; slow subscriber dropped with: {ended}");
    app.stop().await;
}

/// Issue 24 point 2: TLS with a certificate made here (rcgen), the Flight SQL handshake with
/// Basic credentials, and a missing or wrong token refused by every Flight method (Flight SQL
/// and actions go through them; the dashboard's HTTP is `dashboard::*_401_*`).
#[tokio::test(flavor = "multi_thread")]
async fn tls_basic_handshake_and_every_flight_method_refuses_a_bad_token() {
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::{Action, Criteria, Empty, FlightData, FlightDescriptor, Ticket};
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let app = embedded_server(&[
        "--token",
        "s3cret",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let url = format!("https://localhost:{}", app.flight_addr.port());
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(certified.cert.pem()),
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // The handshake takes Basic credentials (the password is the token) and hands back the
    // bearer token the client then sends.
    let mut sql = FlightSqlServiceClient::new(channel.clone());
    let err = sql
        .handshake("analyst", "guess")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid token"), "{err}");
    let token = sql.handshake("analyst", "s3cret").await.unwrap();
    assert_eq!(&token[..], b"s3cret");
    let info = sql.execute("SELECT 1 AS one".into(), None).await.unwrap();
    assert_eq!(fetch(&mut sql, info).await[0].num_rows(), 1);

    // Every method of the Flight service, without a token and with a wrong one.
    for auth in [
        None,
        Some("Bearer guess"),
        Some("Basic YW5hbHlzdDpndWVzcw=="),
    ] {
        let mut raw = FlightServiceClient::new(channel.clone());
        fn req<T>(m: T, auth: Option<&str>) -> tonic::Request<T> {
            let mut r = tonic::Request::new(m);
            if let Some(a) = auth {
                r.metadata_mut().insert("authorization", a.parse().unwrap());
            }
            r
        }
        let desc = || FlightDescriptor::new_cmd(b"SELECT 1".to_vec());
        let none = || futures::stream::iter(Vec::<FlightData>::new());
        let statuses = [
            (
                "handshake",
                raw.handshake(req(futures::stream::iter(vec![]), auth))
                    .await
                    .err(),
            ),
            (
                "list_flights",
                raw.list_flights(req(Criteria::default(), auth)).await.err(),
            ),
            (
                "get_flight_info",
                raw.get_flight_info(req(desc(), auth)).await.err(),
            ),
            (
                "poll_flight_info",
                raw.poll_flight_info(req(desc(), auth)).await.err(),
            ),
            ("get_schema", raw.get_schema(req(desc(), auth)).await.err()),
            (
                "do_get",
                raw.do_get(req(Ticket::new("x"), auth)).await.err(),
            ),
            ("do_put", raw.do_put(req(none(), auth)).await.err()),
            (
                "do_exchange",
                raw.do_exchange(req(none(), auth)).await.err(),
            ),
            (
                "do_action",
                raw.do_action(req(Action::new(pb::actions::LIST_QUERIES, ""), auth))
                    .await
                    .err(),
            ),
            (
                "list_actions",
                raw.list_actions(req(Empty {}, auth)).await.err(),
            ),
        ];
        for (method, status) in statuses {
            let code = status.map(|s| s.code());
            assert_eq!(
                code,
                Some(tonic::Code::Unauthenticated),
                "{method} with {auth:?}"
            );
        }
    }

    // The CLI over TLS: it needs the CA and the token.
    let ca = cert.to_str().unwrap();
    run_ok(pitwall().args([
        "--server", &url, "--tls-ca", ca, "--token", "s3cret", "queries",
    ]));
    for args in [
        vec!["--server", &url, "--token", "s3cret", "queries"],
        vec!["--server", &url, "--tls-ca", ca, "queries"],
    ] {
        let out = run(pitwall().args(&args));
        assert!(!out.status.success(), "{args:?} succeeded");
    }
    let plain = format!("http://127.0.0.1:{}", app.flight_addr.port());
    let out = run(pitwall().args(["--server", &plain, "--token", "s3cret", "queries"]));
    assert!(
        !out.status.success(),
        "plain HTTP/2 to a TLS endpoint succeeded"
    );
    app.stop().await;
}
