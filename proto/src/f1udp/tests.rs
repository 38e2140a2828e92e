//! The decoder on every real capture in `proto/testdata/f1-udp/` (values checked against what
//! the public specification says those bytes mean), and encode/decode round trips.

use std::path::{Path, PathBuf};

use super::*;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/f1-udp")
}

fn capture(name: &str) -> Vec<u8> {
    let dir = if name.starts_with("202") {
        "f1-22-23-24"
    } else {
        "f1-25"
    };
    std::fs::read(data().join(dir).join(name)).unwrap()
}

fn decoded(name: &str) -> (Header, Packet) {
    decode(&capture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every capture file: format 2022 refused for its format, the two hand-made event files
/// refused for their size, every other packet decoded (types Pitwall does not read as `Other`).
#[test]
fn every_capture_decodes_or_is_refused_with_its_reason() {
    let mut files: Vec<PathBuf> = ["f1-22-23-24", "f1-25"]
        .iter()
        .flat_map(|d| std::fs::read_dir(data().join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 111, "captures in testdata");
    let (mut read, mut other) = (0, 0);
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let bytes = std::fs::read(path).unwrap();
        match (name, decode(&bytes)) {
            (n, Err(UdpError::UnsupportedFormat(2022))) if n.starts_with("2022-") => {}
            ("2024-03-RDFL.bin", Err(e)) => assert_eq!(e.reason(), "udp_truncated"),
            ("2024-03-SCAR.bin", Err(e)) => assert_eq!(e.reason(), "udp_oversize"),
            (_, Ok((h, Packet::Other(i)))) => {
                assert_eq!(h.packet_id, i);
                assert!(
                    ![0, 1, 2, 3, 4, 6].contains(&i),
                    "{name}: id {i} not decoded"
                );
                other += 1;
            }
            (_, Ok((h, p))) => {
                assert_eq!(h.packet_id, p.id(), "{name}");
                read += 1;
            }
            (_, Err(e)) => panic!("{name}: {e}"),
        }
    }
    // Read: 2023 5 packets + 19 events, 2024 5 + 19 (of 21 events), 2025 6; other types:
    // 8, 9 and 10.
    assert_eq!((read, other), (54, 27));
    let e = decode(&capture("2022-06.bin")).unwrap_err();
    assert_eq!(e.to_string().lines().count(), 1);
    assert!(e.to_string().contains("format 2022 not supported"), "{e}");
}

#[test]
fn headers_say_format_game_session_frame_and_player() {
    let (h, _) = decoded("2023-00.bin");
    assert_eq!(
        (h.format, h.game_year, h.game_major, h.game_minor),
        (2023, 23, 1, 21)
    );
    assert_eq!(
        (h.session_uid, h.session_time, h.frame),
        (0x68f6_5200_bf7d_356d, 0.0, 0)
    );
    assert_eq!((h.player_car, h.secondary_player_car), (19, 255));
    let (h, _) = decoded("2024-00.bin");
    assert_eq!(
        (h.format, h.game_year, h.game_major, h.game_minor),
        (2024, 24, 1, 17)
    );
    assert_eq!(
        (h.session_uid, h.frame, h.overall_frame),
        (0x2fbb_c3bb_cb0b_8c58, 21, 21)
    );
    let (h, _) = decoded("Motion.bin");
    assert_eq!(
        (h.format, h.game_year, h.game_major, h.game_minor),
        (2025, 25, 1, 18)
    );
    assert_eq!(
        (h.session_uid, h.frame, h.overall_frame),
        (0x3c41_f35f_dad2_92e4, 326, 326)
    );
    assert!((h.session_time - 1.702).abs() < 0.001, "{}", h.session_time);
    assert_eq!(h.player_car, 19);
}

#[test]
fn car_telemetry_speed_rpm_gear_and_temperatures() {
    let telemetry = |name: &str| match decoded(name).1 {
        Packet::CarTelemetry(cars) => cars,
        other => panic!("{name}: {other:?}"),
    };
    // F1 23 and 24: all cars idle on the grid.
    let cars = telemetry("2023-06.bin");
    assert_eq!((cars[0].speed_kmh, cars[0].rpm, cars[0].gear), (0, 3429, 0));
    assert_eq!(
        (cars[0].brake_temps_c, cars[0].engine_temp_c),
        ([38; 4], 110)
    );
    assert_eq!(cars[0].tyre_pressures_psi, [20.3, 20.3, 22.7, 22.7]);
    let cars = telemetry("2024-06.bin");
    assert_eq!((cars[0].speed_kmh, cars[0].rpm, cars[0].gear), (0, 3535, 1));
    assert_eq!(cars[19].tyre_inner_temps_c, [89; 4]);
    // F1 25 at a race start: 20 cars moving off, in first gear.
    let cars = telemetry("CarTelemetry.bin");
    assert_eq!(cars.len(), CARS);
    let c = cars[0];
    assert_eq!(
        (c.speed_kmh, c.rpm, c.gear, c.throttle, c.brake),
        (40, 5961, 1, 1.0, 0.0)
    );
    assert!(!c.drs);
    assert_eq!(
        (c.brake_temps_c, c.tyre_surface_temps_c),
        ([26, 26, 25, 25], [79, 79, 73, 73])
    );
    let player = cars[19];
    assert_eq!((player.speed_kmh, player.rpm, player.gear), (41, 4819, 1));
    assert_eq!(cars.iter().filter(|c| c.speed_kmh > 0).count(), 20);
    assert_eq!(cars[20], CarTelemetry::default(), "unused slots are zero");
}

#[test]
fn participants_names_numbers_and_teams() {
    let participants = |name: &str| match decoded(name).1 {
        Packet::Participants(p) => p,
        other => panic!("{name}: {other:?}"),
    };
    let p = participants("2023-04.bin");
    assert_eq!(p.active_cars, 20);
    let first = &p.cars[0];
    assert_eq!(
        (first.name.as_str(), first.race_number, first.team_id),
        ("HULKENBERG", 27, 7)
    );
    assert!(first.ai);
    assert_eq!(p.cars[5].name, "PÉREZ", "names are UTF-8");
    let player = &p.cars[19];
    assert_eq!(
        (player.name.as_str(), player.race_number, player.ai),
        ("PIASTRI", 81, false)
    );
    let p = participants("2024-04.bin");
    assert_eq!(
        (p.cars[0].name.as_str(), p.cars[0].race_number),
        ("OCON", 31)
    );
    assert_eq!(
        (p.cars[19].name.as_str(), p.cars[19].race_number),
        ("LECLERC", 16)
    );
    let p = participants("Participants.bin");
    assert_eq!(p.active_cars, 20);
    let names: Vec<&str> = p.cars[..3].iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["GASLY", "HADJAR", "VERSTAPPEN"]);
    assert_eq!((p.cars[2].race_number, p.cars[2].team_id), (33, 2));
    assert_eq!(
        (p.cars[19].name.as_str(), p.cars[19].race_number),
        ("RUSSELL", 63)
    );
    assert!(p.cars[19].telemetry_public && !p.cars[19].ai);
}

#[test]
fn lap_data_motion_and_session() {
    let (h, p) = decoded("LapData.bin");
    let Packet::LapData(laps) = p else { panic!() };
    let (car0, player) = (laps[0], laps[h.player_car as usize]);
    assert_eq!(
        (car0.lap, car0.current_lap_ms, car0.position),
        (1, 1675, 19)
    );
    assert!((car0.lap_distance - 170.085).abs() < 0.001);
    assert!((player.lap_distance - 290.890).abs() < 0.001);
    assert_eq!(
        (player.position, player.pit_status, player.result_status),
        (4, 0, 2)
    );
    // F1 23's record is 7 bytes shorter: the same fields still line up.
    let Packet::LapData(laps) = decoded("2023-02.bin").1 else {
        panic!()
    };
    assert_eq!(
        (laps[0].lap, laps[0].position, laps[0].driver_status),
        (1, 13, 4)
    );
    assert!(
        (laps[0].lap_distance + 98.871).abs() < 0.001,
        "before the line"
    );
    let Packet::Motion(cars) = decoded("Motion.bin").1 else {
        panic!()
    };
    let c = cars[0];
    assert!((c.x + 607.709).abs() < 0.001 && (c.y + 2.282).abs() < 0.001);
    assert!((c.z - 432.863).abs() < 0.001);
    // Cars 0 and 19 are as far apart in the world as along the lap (121.0 vs 120.8 m).
    let d = ((c.x - cars[19].x).powi(2) + (c.z - cars[19].z).powi(2)).sqrt();
    assert!(
        (d - (player.lap_distance - car0.lap_distance)).abs() < 1.0,
        "{d}"
    );
    for (name, format, laps, length, kind, track) in [
        ("2023-01.bin", 2023, 5, 5276, 10, 0),
        ("2024-01.bin", 2024, 5, 5408, 15, 3),
        ("Session.bin", 2025, 19, 5798, 15, 11),
    ] {
        let Packet::Session(s) = decoded(name).1 else {
            panic!()
        };
        assert_eq!(
            (s.total_laps, s.track_length_m, s.session_type, s.track_id),
            (laps, length, kind, track)
        );
        assert_eq!(s.type_name(format), "Race", "{name}");
    }
}

#[test]
fn events_by_code() {
    let event = |name: &str| match decoded(name).1 {
        Packet::Event(e) => e,
        other => panic!("{name}: {other:?}"),
    };
    let e = event("2023-03-FTLP.bin");
    assert_eq!(&e.code, b"FTLP");
    let EventDetails::FastestLap { car, lap_time_s } = e.details else {
        panic!()
    };
    assert_eq!(car, 7);
    assert!((lap_time_s - 85.790).abs() < 0.001);
    assert_eq!(
        event("2023-03-OVTK.bin").details,
        EventDetails::Overtake {
            overtaking: 14,
            overtaken: 5
        }
    );
    assert_eq!(event("2023-03-DTSV.bin").details, EventDetails::Car(2));
    for code in ["SSTA", "SEND", "DRSE", "DRSD", "CHQF"] {
        let e = event(&format!("2024-03-{code}.bin"));
        assert_eq!(
            (&e.code, e.details),
            (&code.as_bytes().try_into().unwrap(), EventDetails::None)
        );
    }
    assert_eq!(event("Event.bin").details, EventDetails::Buttons(0));
}

#[test]
fn what_is_not_a_packet_is_refused_with_a_reason() {
    let motion = capture("Motion.bin");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "udp_truncated"),
        (motion[..10].to_vec(), "udp_truncated"),
        (motion[..HEADER_LEN + 5].to_vec(), "udp_truncated"),
        ([motion.as_slice(), &[0]].concat(), "udp_oversize"),
        (
            [&2019u16.to_le_bytes()[..], &motion[2..]].concat(),
            "udp_format",
        ),
        (
            {
                let mut m = motion.clone();
                m[6] = 16;
                m
            },
            "udp_packet_id",
        ),
        (
            {
                let mut m = motion.clone();
                m[6] = 255;
                m
            },
            "udp_packet_id",
        ),
    ];
    let with_time = |t: f32| {
        let mut m = motion.clone();
        m[15..19].copy_from_slice(&t.to_le_bytes());
        (m, "udp_session_time")
    };
    let cases = cases
        .into_iter()
        .chain([f32::NAN, f32::INFINITY, -0.5, 2.0e6].map(with_time));
    for (bytes, reason) in cases {
        let err = decode(&bytes).expect_err(reason);
        assert_eq!(err.reason(), reason, "{err}");
        assert!(!err.to_string().contains('\n'));
    }
}

/// What the encoder writes, the decoder reads back; and the real packets, decoded and
/// encoded again, give the same decoded values.
#[test]
fn encode_then_decode_is_the_identity() {
    for name in [
        "Motion.bin",
        "Session.bin",
        "LapData.bin",
        "Event.bin",
        "Participants.bin",
        "CarTelemetry.bin",
        "2023-02.bin",
        "2023-04.bin",
        "2024-04.bin",
        "2023-03-FTLP.bin",
        "2023-03-OVTK.bin",
        "2024-03-SPTP.bin",
        "2024-03-STLG.bin",
    ] {
        let (h, p) = decoded(name);
        let bytes = encode(&h, &p).unwrap();
        assert_eq!(bytes.len(), capture(name).len(), "{name}: spec size");
        assert_eq!(decode(&bytes).unwrap(), (h, p), "{name}");
    }
    // Made-up values in every modelled field, in every format.
    for format in FORMATS {
        let h = Header {
            format,
            game_year: (format - 2000) as u8,
            game_major: 1,
            game_minor: 2,
            packet_version: 1,
            packet_id: 0,
            session_uid: 42,
            session_time: 12.5,
            frame: 7,
            overall_frame: 9,
            player_car: 3,
            secondary_player_car: 255,
        };
        let lap = CarLap {
            last_lap_ms: 91_234,
            current_lap_ms: 61_002,
            sector1_ms: 61_500,
            sector2_ms: 29_999,
            lap_distance: 1234.5,
            total_distance: 9876.5,
            position: 3,
            lap: 12,
            pit_status: 1,
            sector: 2,
            driver_status: 3,
            result_status: 2,
        };
        let telemetry = CarTelemetry {
            speed_kmh: 312,
            throttle: 0.75,
            steer: -0.25,
            brake: 0.5,
            clutch: 10,
            gear: -1,
            rpm: 11_800,
            drs: true,
            brake_temps_c: [400, 410, 520, 530],
            tyre_surface_temps_c: [90, 91, 92, 93],
            tyre_inner_temps_c: [100, 101, 102, 103],
            engine_temp_c: 115,
            tyre_pressures_psi: [22.5, 22.5, 24.0, 24.0],
        };
        let driver = Participant {
            ai: false,
            driver_id: 9,
            team_id: 2,
            race_number: 1,
            nationality: 22,
            name: "VERSTAPPEN".into(),
            telemetry_public: true,
        };
        let packets = [
            Packet::Motion(vec![
                CarMotion {
                    x: 1.5,
                    y: -2.0,
                    z: 300.25
                };
                CARS
            ]),
            Packet::Session(Session {
                total_laps: 52,
                track_length_m: 5891,
                session_type: 15,
                track_id: 7,
            }),
            Packet::LapData(vec![lap; CARS]),
            Packet::Event(Event {
                code: *b"FTLP",
                details: EventDetails::FastestLap {
                    car: 4,
                    lap_time_s: 90.5,
                },
            }),
            Packet::Participants(Participants {
                active_cars: 22,
                cars: vec![driver; CARS],
            }),
            Packet::CarTelemetry(vec![telemetry; CARS]),
        ];
        for p in packets {
            let bytes = encode(&h, &p).unwrap();
            assert_eq!(bytes.len(), packet_len(format, p.id()).unwrap().unwrap());
            let (h2, p2) = decode(&bytes).unwrap();
            assert_eq!((h2.packet_id, h2.session_uid), (p.id(), 42));
            assert_eq!(p2, p, "format {format}");
        }
    }
}

/// The real F1 25 packets of frame 326 of one race start, joined: a row per active car.
#[test]
fn the_packets_of_a_frame_are_joined_into_a_row_per_car() {
    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::{Float32Type, Float64Type, Int32Type, TimestampMillisecondType};

    let mut frames = Frames::default();
    let arrival = 1_765_000_000_000;
    let push = |frames: &mut Frames, name: &str| {
        let (h, p) = decoded(name);
        frames.push(&h, p, arrival).unwrap()
    };
    // A frame waits for its Lap Data and the names; its Car Telemetry may come first.
    assert!(push(&mut frames, "CarTelemetry.bin").is_none());
    for name in ["Session.bin", "Motion.bin", "Event.bin", "LapData.bin"] {
        assert!(push(&mut frames, name).is_none(), "{name}");
    }
    let rows: RecordBatch = push(&mut frames, "Participants.bin").expect("rows");
    assert_eq!(rows.schema(), crate::schema::telemetry_schema());
    assert_eq!(rows.num_rows(), 20, "the 20 active cars");
    let text = |c: &str, i: usize| {
        rows.column_by_name(c)
            .unwrap()
            .as_string::<i32>()
            .value(i)
            .to_string()
    };
    let f32_at = |c: &str, i: usize| {
        rows.column_by_name(c)
            .unwrap()
            .as_primitive::<Float32Type>()
            .value(i)
    };
    assert_eq!(text("session", 0), "monza-3c41f35fdad292e4");
    assert_eq!(
        (text("driver", 0), text("driver", 19)),
        ("GASLY".into(), "RUSSELL".into())
    );
    assert_eq!(
        rows.column_by_name("lap")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0),
        1
    );
    assert_eq!(
        (f32_at("speed", 0), f32_at("rpm", 0), f32_at("throttle", 0)),
        (40.0, 5961.0, 100.0)
    );
    // The game's X and Z are the ground plane (the schema's x, y), its Y the height.
    assert!((f32_at("x", 0) + 607.709).abs() < 0.001 && (f32_at("y", 0) - 432.863).abs() < 0.001);
    assert!((f32_at("z", 0) + 2.282).abs() < 0.001);
    let distance = rows
        .column_by_name("distance")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert!((distance.value(0) - 170.085).abs() < 0.001);
    // The session started 1.702 s before the first packet arrived; this frame is at 1.702 s.
    let ts = rows
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(ts.value(0), arrival);
    // The same frame again: duplicates, ignored and counted.
    assert!(push(&mut frames, "CarTelemetry.bin").is_none());
    assert!(push(&mut frames, "LapData.bin").is_none());
    assert_eq!(frames.take_counts().duplicates, 2);
    // The next frame, its Car Telemetry first: rows only for the car whose lap timer ran,
    // once its Lap Data came.
    let next = |name: &str| {
        let (mut h, p) = decoded(name);
        (h.frame, h.overall_frame) = (h.frame + 1, h.overall_frame + 1);
        h.session_time += 1.0 / 60.0;
        (h, p)
    };
    let (h, p) = next("CarTelemetry.bin");
    assert!(frames.push(&h, p, arrival + 16).unwrap().is_none());
    let (h, p) = next("LapData.bin");
    let Packet::LapData(mut laps) = p else {
        panic!()
    };
    laps[3].current_lap_ms += 17;
    let rows = frames
        .push(&h, Packet::LapData(laps), arrival + 17)
        .unwrap()
        .expect("a batch");
    assert_eq!(rows.num_rows(), 1, "only the car whose lap timer ran");
    assert_eq!(
        rows.column_by_name("driver")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "SAINZ"
    );
}

/// Loss, repetition and disorder, counted by frame: a frame without its Car Telemetry, a frame
/// of which nothing came (a gap in the counter over its usual step), a packet after its frame
/// settled, a packet twice; a counter far back is the game counting afresh.
#[test]
fn lost_repeated_and_late_frames_are_counted() {
    let mut frames = Frames::default();
    let t0 = 1_765_000_000_000;
    let at = |frame: u32, name: &str| {
        let (mut h, p) = decoded(name);
        (h.frame, h.overall_frame) = (frame, frame);
        h.session_time = frame as f32 / 60.0;
        (h, p)
    };
    let (h, p) = at(1, "Participants.bin");
    frames.push(&h, p, t0).unwrap();
    let mut rows = 0;
    for f in 1..=10u32 {
        for name in ["LapData.bin", "CarTelemetry.bin"] {
            let skip = (f == 4 && name == "CarTelemetry.bin") || f == 6 || f == 8;
            if !skip {
                let (h, p) = at(f, name);
                let made = frames.push(&h, p, t0 + i64::from(f)).unwrap();
                rows += made.map_or(0, |r| r.num_rows());
            }
        }
    }
    let (h, p) = at(7, "LapData.bin");
    assert!(frames.push(&h, p, t0 + 20).unwrap().is_none());
    frames.settle(t0 + 1_000);
    // Frame 8's Lap Data, after its frame settled (arrived 1 s after frame 7's).
    let (h, p) = at(8, "LapData.bin");
    assert!(frames.push(&h, p, t0 + 1_000).unwrap().is_none());
    let counts = frames.take_counts();
    assert_eq!(
        (counts.lost, counts.duplicates, counts.late),
        (3, 1, 1),
        "lost: 4 (no telemetry), 6 and 8 (nothing); duplicate: 7's Lap Data"
    );
    // The same Lap Data every frame: only the first complete frame moved the cars on.
    assert_eq!(rows, 20);
    // The game counts afresh (a new session of the same UID): frame 2 after frame 20,000
    // is not late.
    let (h, p) = at(20_000, "LapData.bin");
    frames.push(&h, p, t0 + 3_000).unwrap();
    frames.settle(t0 + 10_000);
    frames.take_counts();
    let (h, p) = at(2, "CarTelemetry.bin");
    frames.push(&h, p, t0 + 10_001).unwrap();
    assert_eq!(frames.take_counts().late, 0);
}
