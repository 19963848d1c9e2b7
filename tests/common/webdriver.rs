//! A real browser for the web app's tests: Debian's Chromium, headless, driven by its ChromeDriver
//! over the W3C WebDriver protocol (JSON over HTTP — the few commands the tests use, spoken
//! directly rather than through a client library).
//!
//! `infra/dev.sh test` installs `chromium` and `chromium-driver`; `CHROMEDRIVER` and `CHROMIUM`
//! name other binaries.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    port: u16,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: TempDir,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts ChromeDriver on a free port and a headless Chromium session of `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&driver_bin).exists() && std::path::Path::new(&chromium).exists(),
            "the browser tests need Chromium and ChromeDriver ({chromium}, {driver_bin}): \
             `infra/dev.sh test` installs Debian's chromium and chromium-driver"
        );
        let port = super::free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("docuchat-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // the flags that keep Chromium from reaching for the network at start
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-quic", "--disable-default-apps", "--disable-extensions",
                    "--lang=en-US", "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let resp: Value = http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = resp["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {resp}")).to_owned();
        Browser { driver, port, base, session, http, _profile: TempDir(profile) }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method, path, body).await {
            Ok(v) => v,
            Err((err, message)) => panic!("webdriver {path}: {err}: {message}"),
        }
    }

    /// A command, with WebDriver's error (its code and message) as `Err`.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (String, Value)> {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(err) = resp["value"]["error"].as_str() {
            return Err((err.to_owned(), resp["value"]["message"].clone()));
        }
        Ok(resp["value"].clone())
    }

    /// The browser's windows (tabs), the current one first among equals.
    pub async fn windows(&self) -> Vec<String> {
        let v = self.get("/window/handles").await;
        v.as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_owned()).collect()
    }

    pub async fn window(&self) -> String {
        self.get("/window").await.as_str().unwrap().to_owned()
    }

    pub async fn switch_to(&self, handle: &str) {
        self.post("/window", json!({ "handle": handle })).await;
    }

    /// Closes the current window (then switch to another).
    pub async fn close_window(&self) {
        self.call(reqwest::Method::DELETE, "/window", None).await;
    }

    /// The current window's address.
    pub async fn url(&self) -> String {
        self.get("/url").await.as_str().unwrap().to_owned()
    }

    /// Waits up to `secs` for the page's dialog (`confirm`, `alert`), accepts it and returns its text.
    pub async fn accept_dialog(&self, secs: u64) -> String {
        let started = Instant::now();
        loop {
            if let Ok(text) = self.try_call(reqwest::Method::GET, "/alert/text", None).await {
                self.post("/alert/accept", json!({})).await;
                return text.as_str().unwrap_or_default().to_owned();
            }
            assert!(started.elapsed() < Duration::from_secs(secs), "no dialog after {secs} s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    pub async fn refresh(&self) {
        self.post("/refresh", json!({})).await;
    }

    /// Runs `script` in the page (as a function body; `arguments` are `args`) and returns its value.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args })).await
    }

    /// Every element that matches the CSS selector, now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        let v = self.post("/elements", json!({ "using": "css selector", "value": css })).await;
        v.as_array().unwrap().iter().map(|e| Element(e[ELEMENT].as_str().unwrap().to_owned())).collect()
    }

    /// The first element that matches, waiting up to `secs` for one that is displayed.
    pub async fn wait_for(&self, css: &str, secs: u64) -> Element {
        let started = Instant::now();
        loop {
            for e in self.all(css).await {
                if self.get(&format!("/element/{}/displayed", e.0)).await == json!(true) {
                    return e;
                }
            }
            if started.elapsed() > Duration::from_secs(secs) {
                let _ = self.screenshot("timeout").await;
                panic!("no displayed element matches {css} after {secs} s (screenshot: timeout.png)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `script` (a function body) returns something truthy, and returns it.
    pub async fn wait_until(&self, what: &str, script: &str, args: Value, secs: u64) -> Value {
        let started = Instant::now();
        loop {
            let v = self.eval(script, args.clone()).await;
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            if started.elapsed() > Duration::from_secs(secs) {
                let _ = self.screenshot("timeout").await;
                panic!("{what}: not after {secs} s (screenshot: timeout.png)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, e: &Element) {
        self.post(&format!("/element/{}/click", e.0), json!({})).await;
    }

    /// Types `text` into the element (a file input takes a file's path).
    pub async fn type_into(&self, e: &Element, text: &str) {
        self.post(&format!("/element/{}/value", e.0), json!({ "text": text })).await;
    }

    pub async fn clear(&self, e: &Element) {
        self.post(&format!("/element/{}/clear", e.0), json!({})).await;
    }

    pub async fn attr(&self, e: &Element, name: &str) -> Option<String> {
        self.get(&format!("/element/{}/attribute/{name}", e.0)).await.as_str().map(str::to_owned)
    }

    /// A DOM property (an input's current `value`, say).
    pub async fn prop(&self, e: &Element, name: &str) -> Value {
        self.get(&format!("/element/{}/property/{name}", e.0)).await
    }

    pub async fn text(&self, e: &Element) -> String {
        self.get(&format!("/element/{}/text", e.0)).await.as_str().unwrap_or_default().to_owned()
    }

    /// Saves a PNG of the window as `target/screenshots/<name>.png` (kept as CI artefacts) and
    /// returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Ends the session and the driver (dropping does the same).
    pub fn quit(self) {}
}

impl Drop for Browser {
    fn drop(&mut self) {
        // a test that failed half-way: ending the session ends Chromium too (killing the driver
        // alone would leave it running)
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ =
                write!(s, "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", self.session);
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `target/screenshots/` of this checkout (or of `CARGO_TARGET_DIR`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}
