use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float32Type, Int32Type, TimestampMillisecondType};
use pitwall_proto::TelemetrySample;
use prost::Message;

use super::*;

fn msg<'a>(payload: &'a [u8], key: Option<&'a [u8]>, offset: i64) -> RawMessage<'a> {
    RawMessage {
        payload,
        key,
        partition: 0,
        offset,
        timestamp_ms: Some(1_700_000_000_000),
        format_header: None,
    }
}

fn decoder() -> Decoder {
    Decoder::new(DecodeConfig::default()).unwrap()
}

#[test]
fn fastf1_json_with_date() {
    let p = br#"{"Session":"bgp","Driver":"VER","LapNumber":3,"Date":"2023-07-09 14:03:09.767","SessionTime":3728.731,"Speed":291.0,"RPM":11234,"nGear":7,"Throttle":100,"Brake":false,"DRS":12}"#;
    let d = decoder().decode(&[msg(p, Some(b"VER"), 7)]).unwrap();
    assert!(d.bad.is_empty(), "{:?}", d.bad);
    let r = &d.rows;
    assert_eq!(r.num_rows(), 1);
    assert_eq!(
        r.column_by_name("driver")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "VER"
    );
    assert_eq!(
        r.column_by_name("lap")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0),
        3
    );
    let ts = r
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>()
        .value(0);
    assert_eq!(ts, 1_688_911_389_767);
    assert_eq!(
        r.column_by_name("rpm")
            .unwrap()
            .as_primitive::<Float32Type>()
            .value(0),
        11234.0
    );
}

#[test]
fn the_old_producers_exact_messages() {
    // RPM, Speed, nGear, Throttle, Time, X, Y, LapIdx; no Driver (the key), no Date or
    // SessionTime (the Kafka timestamp).
    let p = br#"{"RPM": 10512.0, "Speed": 287.0, "nGear": 7, "Throttle": 99.0, "Time": "0 days 00:01:02.500000", "X": -1201.5, "Y": 830.0, "LapIdx": 12}"#;
    let d = decoder().decode(&[msg(p, Some(b"HAM"), 1)]).unwrap();
    assert!(d.bad.is_empty(), "{:?}", d.bad);
    let r = &d.rows;
    assert_eq!(
        r.column_by_name("driver")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "HAM"
    );
    assert_eq!(
        r.column_by_name("lap")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0),
        12
    );
    assert_eq!(
        r.column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMillisecondType>()
            .value(0),
        1_700_000_000_000
    );
    assert_eq!(
        r.column_by_name("x")
            .unwrap()
            .as_primitive::<Float32Type>()
            .value(0),
        -1201.5
    );
    assert_eq!(
        r.column_by_name("session")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "live"
    );
}

#[test]
fn session_time_as_timedelta_text_and_learnt_session_start() {
    let a = br#"{"Driver":"LEC","Date":"2023-07-09T13:01:02.743Z","SessionTime":"0 days 00:00:01.707000","Speed":0,"RPM":0}"#;
    let b = br#"{"Driver":"LEC","SessionTime":11.707,"Speed":0,"RPM":0}"#;
    let d = decoder()
        .decode(&[msg(a, None, 1), msg(b, None, 2)])
        .unwrap();
    assert!(d.bad.is_empty(), "{:?}", d.bad);
    let ts = d
        .rows
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(
        ts.value(1) - ts.value(0),
        10_000,
        "start learnt from the first message"
    );
}

#[test]
fn bad_messages_are_isolated_and_named() {
    let good =
        br#"{"Driver":"VER","Speed":100,"RPM":9000,"Date":"2023-07-09T14:00:00Z"}"#.as_slice();
    let payloads: Vec<&[u8]> = vec![
        good,
        b"\xff\xfe garbage",
        br#"{"Driver":"VER","Speed":100"#,
        good,
        br#"{"Driver":"VER","Speed":"fast","RPM":9000}"#,
        br#"{"Driver":"VER","RPM":9000}"#,
        b"",
        br#"{"Driver":"VER","Speed":1,"RPM":1} {"Driver":"VER","Speed":1,"RPM":1}"#,
        good,
    ];
    let mut messages: Vec<RawMessage<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| msg(p, None, i as i64))
        .collect();
    for m in &mut messages {
        m.format_header = Some(b"json");
    }
    let d = decoder().decode(&messages).unwrap();
    assert_eq!(d.rows.num_rows(), 3);
    assert_eq!(d.row_message, vec![0, 3, 8]);
    let mut reasons: Vec<(usize, &str)> = d.bad.iter().map(|b| (b.index, b.reason)).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            (1, reason::NOT_JSON),
            (2, reason::TRUNCATED),
            (4, reason::WRONG_TYPE),
            (5, reason::MISSING_FIELD),
            (6, reason::EMPTY),
            (7, reason::NOT_ONE_OBJECT)
        ]
    );
}

#[test]
fn aliases_fill_only_what_the_first_name_left_empty() {
    let payloads: Vec<&[u8]> = vec![
        br#"{"Driver":"VER","LapNumber":3,"Speed":1,"RPM":1}"#,
        br#"{"Driver":"HAM","LapIdx":12,"Speed":1,"RPM":1}"#,
        // both names: the first one wins, the alias is not even read
        br#"{"Driver":"LEC","LapNumber":5,"LapIdx":"five","Speed":1,"RPM":1}"#,
        // the alias is read only for the empty column, and is then checked like any field
        br#"{"Driver":"SAI","LapIdx":"six","Speed":1,"RPM":1}"#,
        br#"{"Driver":"NOR","Speed":1,"RPM":1}"#,
        br#"{"Driver":"PIA","LapNumber":null,"LapIdx":7,"Speed":1,"RPM":1}"#,
        // a name spelt with escapes is still that name
        br#"{"Driver":"RUS","Lap\u0049dx":8,"Speed":1,"RPM":1}"#,
    ];
    let messages: Vec<RawMessage<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| msg(p, None, i as i64))
        .collect();
    let d = decoder().decode(&messages).unwrap();
    let bad: Vec<(usize, &str)> = d.bad.iter().map(|b| (b.index, b.reason)).collect();
    assert_eq!(bad, vec![(3, reason::WRONG_TYPE)]);
    let driver = d.rows.column_by_name("driver").unwrap().as_string::<i32>();
    let lap = d
        .rows
        .column_by_name("lap")
        .unwrap()
        .as_primitive::<Int32Type>();
    let mut got: Vec<(usize, &str, Option<i32>)> = (0..d.rows.num_rows())
        .map(|i| {
            (
                d.row_message[i],
                driver.value(i),
                lap.is_valid(i).then(|| lap.value(i)),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (0, "VER", Some(3)),
            (1, "HAM", Some(12)),
            (2, "LEC", Some(5)),
            (4, "NOR", None),
            (5, "PIA", Some(7)),
            (6, "RUS", Some(8)),
        ]
    );
}

#[test]
fn oversize_payloads_are_refused_before_decoding() {
    let config = DecodeConfig {
        max_message_bytes: 10,
        ..Default::default()
    };
    let d = Decoder::new(config)
        .unwrap()
        .decode(&[msg(br#"{"Driver":"VER","Speed":1,"RPM":1}"#, None, 0)])
        .unwrap();
    assert_eq!(d.bad[0].reason, reason::OVERSIZE);
}

#[test]
fn protobuf_samples_and_batches() {
    let s = TelemetrySample {
        driver: "NOR".into(),
        date_ms: Some(1_688_911_389_767),
        speed: Some(250.0),
        rpm: Some(11000.0),
        lap: Some(4),
        ..Default::default()
    };
    let one = s.encode_to_vec();
    let batch = pitwall_proto::TelemetryBatch {
        samples: vec![s.clone(), s.clone()],
    }
    .encode_to_vec();
    let mut m1 = msg(&one, None, 0);
    m1.format_header = Some(b"protobuf");
    let mut m2 = msg(&batch, None, 1);
    m2.format_header = Some(b"protobuf-batch");
    let auto = msg(&one, None, 2); // no header, not '{': protobuf
    let d = decoder().decode(&[m1, m2, auto]).unwrap();
    assert!(d.bad.is_empty(), "{:?}", d.bad);
    assert_eq!(d.rows.num_rows(), 4);
    assert_eq!(
        d.rows
            .column_by_name("lap")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(3),
        4
    );
    assert_eq!(d.rows.column_by_name("x").unwrap().null_count(), 4);
}

/// An internal error on a micro-batch costs no message: the decoder takes the batch apart,
/// and the message it still fails on is a bad message (dead-lettered), not skipped.
#[test]
fn an_internal_decoder_failure_loses_no_message_and_dead_letters_the_culprit() {
    let mut d = decoder();
    d.fail_on = Some(b"BOOM");
    let (a, b) = (
        br#"{"Session":"s","Driver":"VER","LapNumber":1,"SessionTime":1.0,"Speed":1,"RPM":1}"#,
        br#"{"Session":"s","Driver":"HAM","LapNumber":1,"SessionTime":2.0,"Speed":2,"RPM":2}"#,
    );
    let culprit = br#"{"Session":"s","Driver":"BOOM","LapNumber":1,"SessionTime":3.0}"#;
    let out = d
        .decode(&[
            msg(a, None, 0),
            msg(culprit, None, 1),
            msg(b"{nope", None, 2),
            msg(b, None, 3),
        ])
        .unwrap();
    assert_eq!(out.rows.num_rows(), 2);
    assert_eq!(out.row_message, [0, 3]);
    let bad: Vec<(usize, &str)> = out.bad.iter().map(|b| (b.index, b.reason)).collect();
    assert_eq!(bad, [(1, reason::DECODER_ERROR), (2, reason::NOT_JSON)]);
    assert!(out.bad[0].error.contains("injected"), "{:?}", out.bad[0]);
}
