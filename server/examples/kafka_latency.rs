//! Produce -> consume latency of the broker alone (no Pitwall), to tell the broker's share of
//! the end-to-end latency `pitwall bench` reports: `cargo run --release
//! --example kafka_latency -- 127.0.0.1:19092 [fetch.wait.max.ms]`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let brokers = args.get(1).cloned().unwrap_or("127.0.0.1:19092".into());
    let wait = args.get(2).cloned().unwrap_or("10".into());
    let parts: i32 = args.get(3).map_or(1, |p| p.parse().unwrap());
    let topic = format!("lat-{}", now_us());
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    admin
        .create_topics(
            &[NewTopic::new(&topic, parts, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &topic)
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", &wait)
        .create()?;
    consumer.subscribe(&[&topic])?;
    let t = topic.clone();
    let b = brokers.clone();
    std::thread::spawn(move || {
        let p: ThreadedProducer<_> = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("linger.ms", "2")
            .create()
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        for _ in 0..3000 {
            let v = now_us().to_string();
            let k = (now_us() % 20).to_string();
            let _ = p.send(BaseRecord::to(&t).key(&k).payload(&v));
            std::thread::sleep(Duration::from_millis(3));
        }
        p.flush(Duration::from_secs(5)).unwrap();
    });
    let mut lat = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < end && lat.len() < 3000 {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let sent: u64 = std::str::from_utf8(m.payload().unwrap())?.parse()?;
            lat.push((now_us() - sent) as f64 / 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!(
        "fetch.wait.max.ms={wait}, {parts} partitions: {} msgs, p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms",
        lat.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    );
    Ok(())
}
