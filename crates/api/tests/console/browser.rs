//! Browser tests (`ui_*`): the api served on a loopback port over a seeded database, driven
//! in headless Chromium through a chromedriver each test starts on a free port. They sign in
//! through the login form, click through to an audit timeline, act, retry a dead job and
//! preview a check, saving screenshots under `target/ui-screenshots/`. Without chromium or
//! chromedriver they fail with the packages to install: they never skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::Duration;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use escalator_testkit::free_port;

use crate::helpers::*;

/// The browser binary (Debian package `chromium`).
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

/// The WebDriver server (Debian package `chromium-driver`).
fn chromedriver() -> PathBuf {
    std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromedriver".into())
}

/// Where screenshots go: `target/ui-screenshots/` of the workspace.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A chromedriver process and a headless Chromium session; both end on drop.
struct Browser {
    driver: Child,
    client: Option<Client>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        for (what, path) in [("chromium", chromium()), ("chromedriver", chromedriver())] {
            assert!(
                path.exists(),
                "{what} is missing at {}: install the Debian packages `chromium` and \
                 `chromium-driver` (apt-get install -y --no-install-recommends chromium \
                 chromium-driver), or point CHROMIUM / CHROMEDRIVER at them",
                path.display()
            );
        }
        let port = free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver().display()));
        let mut browser = Browser {
            driver,
            client: None,
        };
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,1000"],
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let started = Instant::now();
        loop {
            let attempt = ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await;
            match attempt {
                Ok(c) => {
                    browser.client = Some(c);
                    return browser;
                }
                Err(e) if started.elapsed() > StdDuration::from_secs(20) => {
                    panic!("chromedriver on {url} did not start a Chromium session: {e}")
                }
                Err(_) => tokio::time::sleep(StdDuration::from_millis(100)).await,
            }
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.c().screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Clicks a link or button and waits for the navigation it starts (every click here
    /// leads to another URL: a page, a filtered page, or a redirect carrying a note).
    async fn click(&self, locator: Locator<'_>) {
        let before = self.c().current_url().await.unwrap().to_string();
        self.c().find(locator).await.unwrap().click().await.unwrap();
        self.wait_past(&before).await;
    }

    /// Submits a form with its submit button and waits for the navigation.
    async fn submit(&self, form: &fantoccini::elements::Form) {
        let before = self.c().current_url().await.unwrap().to_string();
        form.submit().await.unwrap();
        self.wait_past(&before).await;
    }

    async fn wait_past(&self, before: &str) {
        let started = Instant::now();
        while self.c().current_url().await.unwrap().as_str() == before {
            assert!(
                started.elapsed() < StdDuration::from_secs(10),
                "still at {before} 10 s after the click"
            );
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
        // and until the new document has loaded
        while self
            .c()
            .execute("return document.readyState", vec![])
            .await
            .unwrap()
            != "complete"
        {
            assert!(started.elapsed() < StdDuration::from_secs(10), "page load");
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            c.close().await.unwrap();
        }
    }
}

/// The console served on a loopback port; returns its base URL.
async fn serve(c: &Console) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = c.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// Signs in through the login form with `token`, landing on `path`.
async fn sign_in(b: &Browser, base: &str, path: &str, token: &str) {
    b.c().goto(&format!("{base}{path}")).await.unwrap();
    let url = b.c().current_url().await.unwrap();
    assert_eq!(url.path(), "/ui/login", "sent to the login form first");
    let form = b
        .c()
        .form(Locator::Css("form[action='/ui/login']"))
        .await
        .unwrap();
    form.set_by_name("token", token).await.unwrap();
    b.submit(&form).await;
    let url = b.c().current_url().await.unwrap();
    assert_eq!(url.path(), path.split('?').next().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_every_page_loads_and_a_workflow_leads_to_its_audit_timeline() {
    let c = console(tokens()).await;
    let title = "<script>alert('pwned')</script> Laptop";
    let w = c.workflow("PO-1", title, Duration::minutes(40)).await;
    remind(&c.db.store, &w).await;
    for i in 0..12 {
        c.workflow(
            &format!("PO-{}", i + 2),
            &format!("Chair {i}"),
            Duration::hours(i),
        )
        .await;
    }
    let base = serve(&c).await;
    let b = Browser::start().await;
    sign_in(&b, &base, "/ui", ADMIN).await;
    assert_eq!(b.text("h1").await, "Overview");
    // the title is text, not markup: no alert opened, and it reads back verbatim
    let soon = b.text("main table tbody tr td a").await;
    assert_eq!(soon, title);
    b.screenshot("overview").await;

    b.click(Locator::LinkText("Workflows")).await;
    assert_eq!(b.text("h1").await, "Workflows");
    b.screenshot("workflows").await;
    let search = b.c().form(Locator::Css("form.bar")).await.unwrap();
    search.set_by_name("q", "script").await.unwrap();
    b.submit(&search).await;
    let rows = b.c().find_all(Locator::Css("main tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 1);

    b.click(Locator::LinkText(title)).await;
    assert_eq!(
        b.c().current_url().await.unwrap().path(),
        format!("/ui/workflows/{}", w.id)
    );
    assert_eq!(b.text("#audit").await, "Audit timeline");
    let timeline = b.text("#audit + div table").await;
    for expected in ["create", "remind", "escalator", "sla", "v1"] {
        assert!(timeline.contains(expected), "{expected} in {timeline}");
    }
    b.screenshot("workflow").await;

    // an action: hold, posted with the page's CSRF token, then redirected back
    b.click(Locator::Css("form[action$='/hold'] button")).await;
    assert_eq!(b.text("p.flash").await, "hold done");
    let timeline = b.text("#audit + div table").await;
    assert!(timeline.contains("hold"), "{timeline}");
    assert!(timeline.contains("admin"), "the token's name is the actor");

    b.click(Locator::LinkText("Inbox")).await;
    let inbox = b.c().form(Locator::Css("form.bar")).await.unwrap();
    inbox.set_by_name("recipient", "alice").await.unwrap();
    b.submit(&inbox).await;
    assert!(b.text("main table").await.contains("Reminder:"));
    b.click(Locator::Css("form[action$='/read'] button")).await;
    assert_eq!(b.text("p.flash").await, "marked read");
    b.screenshot("inbox").await;

    for (link, heading) in [("Queues", "Queues"), ("Checks", "Checks")] {
        b.click(Locator::LinkText(link)).await;
        assert_eq!(b.text("h1").await, heading);
        b.screenshot(&heading.to_lowercase()).await;
    }

    // a phone-sized window still shows the overview
    b.c().set_window_size(390, 844).await.unwrap();
    b.click(Locator::LinkText("Overview")).await;
    assert_eq!(b.text("h1").await, "Overview");
    b.screenshot("overview-phone").await;

    b.click(Locator::Css("form[action='/ui/logout'] button"))
        .await;
    assert_eq!(b.c().current_url().await.unwrap().path(), "/ui/login");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_a_dead_job_and_a_dead_delivery_are_retried_from_the_queues_page() {
    let c = console(tokens()).await;
    let w = c.workflow("PO-1", "Laptop", Duration::minutes(40)).await;
    remind(&c.db.store, &w).await;
    kill_deliveries(&c.db.store, &w).await;
    let queue = c.queues.names().batches.clone();
    bury(&queue, "job-7").await;
    let base = serve(&c).await;
    let b = Browser::start().await;
    sign_in(&b, &base, "/ui/queues", ADMIN).await;
    let dead = b.text("main h2 + div table").await;
    assert!(dead.contains("job-7"), "{dead}");
    assert!(
        dead.contains("boom: <img src=x onerror=alert(1)>"),
        "error as text"
    );
    b.screenshot("queues-dead").await;
    b.click(Locator::Css("form[action*='/job-7/retry'] button"))
        .await;
    assert_eq!(
        b.text("p.flash").await,
        format!("job job-7 is back in {queue}")
    );
    let stats = c.queues.stats().await.unwrap();
    let s = stats.iter().find(|s| s.queue == queue).unwrap();
    assert_eq!((s.pending, s.dead), (1, 0));

    b.click(Locator::Css("form[action^='/ui/outbox/'] button"))
        .await;
    assert!(b.text("p.flash").await.ends_with("will be sent again"));
    let rows = c.db.store.workflow_outbox(w.id).await.unwrap();
    assert_eq!(rows[0].status, "pending");
    assert!(b.text("main").await.contains("no dead job"));
    b.screenshot("queues-retried").await;

    // a read token sees the page without retry buttons
    b.click(Locator::Css("form[action='/ui/logout'] button"))
        .await;
    sign_in(&b, &base, "/ui/queues", READER).await;
    assert!(
        b.c()
            .find_all(Locator::Css("form[action$='/retry']"))
            .await
            .unwrap()
            .is_empty()
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_a_dry_run_check_previews_and_a_real_one_is_watched() {
    let c = console(tokens()).await;
    c.workflow("PO-1", "Overdue laptop", -Duration::minutes(10))
        .await;
    c.workflow("PO-2", "Chair soon due", Duration::minutes(30))
        .await;
    let base = serve(&c).await;
    let before = c.db.store.table_counts().await.unwrap();
    let b = Browser::start().await;
    sign_in(&b, &base, "/ui/checks", ADMIN).await;
    b.click(Locator::Css("form[method='get'] button")).await;
    assert!(
        b.text("#preview").await.contains("nothing was written"),
        "a preview"
    );
    let preview = b.text("#preview + p + div.cards + div table").await;
    assert!(preview.contains("Overdue laptop"), "{preview}");
    assert!(preview.contains("escalate"), "{preview}");
    assert!(preview.contains("Chair soon due"), "{preview}");
    assert!(preview.contains("remind"), "{preview}");
    b.screenshot("checks-dry-run").await;
    assert_eq!(c.db.store.table_counts().await.unwrap(), before);

    b.click(Locator::Css(
        "form[method='post'][action='/ui/checks'] button",
    ))
    .await;
    let path = b.c().current_url().await.unwrap().path().to_owned();
    assert!(path.starts_with("/ui/checks/"), "{path}");
    assert!(b.text("h1").await.contains("queued"));
    b.screenshot("check-run").await;
    b.close().await;
}
