//! What the dashboard tests stand on: a real Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`; `scripts/test.sh` installs them), and a plain HTTP client
//! for the dashboard's API, its live stream and `/metrics`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::support::free_port;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Headless Chromium at a pit laptop's 1366x768, through its own chromedriver.
pub(crate) struct Browser {
    pub page: WebDriver,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub(crate) async fn start() -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: the dashboard tests need Debian's chromium and chromium-driver \
                 (scripts/test.sh installs them with apt-get)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1366,768", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let page = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver at {url} gave no browser session: {e}"),
            }
        };
        // A pit laptop's screen: the page itself (not the window) 1366x768.
        let inner = page
            .execute("return [window.innerWidth, window.innerHeight]", vec![])
            .await
            .unwrap();
        let (w, h) = page.get_window_size().await.unwrap();
        let (dw, dh) = (
            w as i64 - inner[0].as_i64().unwrap(),
            h as i64 - inner[1].as_i64().unwrap(),
        );
        page.set_window_size((1366 + dw) as u32, (768 + dh) as u32)
            .await
            .unwrap();
        Self {
            page,
            driver,
            _profile: profile,
        }
    }

    /// Runs JS in the page and returns what it returns.
    pub(crate) async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.page
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    pub(crate) async fn count(&self, css: &str) -> usize {
        self.page
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len())
    }

    pub(crate) async fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
            vec![json!(css)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    pub(crate) async fn click(&self, css: &str) {
        self.page
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Chooses an option of a `<select>`, as a user does (its `change` event).
    pub(crate) async fn select(&self, css: &str, value: &str) {
        self.js(
            "const s = document.querySelector(arguments[0]); s.value = arguments[1];
             s.dispatchEvent(new Event('change'))",
            vec![json!(css), json!(value)],
        )
        .await;
    }

    /// The connection indicator's state (`live`, `reconnecting`, ...).
    pub(crate) async fn connection(&self) -> String {
        self.js(
            "return document.querySelector('#conn').dataset.state",
            vec![],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Saves a screenshot under the test target directory and returns its path.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, self.page.screenshot().await.unwrap()).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    pub(crate) async fn close(mut self) {
        let _ = self.page.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    /// After a failed test too: chromedriver, and the browser it started (which would outlive
    /// it), found by its profile directory.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self._profile.path().display().to_string()])
            .status();
    }
}

/// Waits until `check` returns Some, or fails saying what it waited for.
pub(crate) async fn wait_until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < within, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A plain HTTP/1.1 client for the dashboard's endpoints.
#[derive(Clone)]
pub(crate) struct Http {
    client: HttpClient<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl Http {
    pub(crate) fn new(addr: std::net::SocketAddr, token: Option<&str>) -> Self {
        Self {
            client: HttpClient::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
            token: token.map(String::from),
        }
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> hyper::Response<Incoming> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Status and whole body.
    pub(crate) async fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let resp = self.send(method, path, body).await;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        self.call("GET", path, "").await
    }
}

/// Events of a live stream, as (kind, JSON data), read from a response body until it ends.
pub(crate) struct Events {
    body: Incoming,
    buf: String,
}

impl Events {
    pub(crate) fn new(resp: hyper::Response<Incoming>) -> Self {
        assert_eq!(resp.status().as_u16(), 200, "live stream refused");
        Self {
            body: resp.into_body(),
            buf: String::new(),
        }
    }

    /// The next event (None when the stream ended).
    pub(crate) async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut kind = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event:") {
                        kind = k.trim().to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((
                    kind,
                    serde_json::from_str(&data).expect("event data is JSON"),
                ));
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}
