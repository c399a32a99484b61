//! The console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver with fantoccini): log in, find an
//! event by order id from the keyboard, open its detail and its order's
//! timeline with the backwards status flagged, and bulk-replay dead events
//! after the dry-run count, then see them arrive on a bound queue.
//!
//! Screenshots of each step go to `target/tmp/console/` for a person to look
//! at.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::on_both_backends;
use crate::support::*;

const TOKEN: &str = "console-test-token-0123456789";

/// A chromedriver of our own on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// `None` (a skip) only where chromedriver is not installed, never in CI.
    fn start() -> Option<Self> {
        let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        assert!(
            binary.is_some() || std::env::var_os("CI").is_none(),
            "CI must install chromium-driver"
        );
        let port = free_port();
        let child = Command::new(binary?)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// A headless Chromium session with a fresh profile in `profile`.
    async fn browser(&self, profile: &std::path::Path) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1360,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        // chromedriver is spoken to over plain HTTP on loopback; the TLS stack
        // the client is built with still wants a provider chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        ClientBuilder::rustls()
            .expect("rustls")
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Saves a screenshot as `target/tmp/console/{name}.png`.
async fn screenshot(browser: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// Clicks the element `locator` finds, waiting for it to appear (and looking
/// again if a navigation replaced the page it was found on).
async fn click(browser: &Client, locator: Locator<'_>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let clicked = match browser.find(locator).await {
            Ok(element) => element.click().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match clicked {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "cannot {what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the page's heading satisfies `expected` (a click that submits a
/// form or follows a link may return before the next page has replaced this
/// one, whose heading is still there); returns it.
async fn heading(browser: &Client, expected: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = match browser.find(Locator::Css("h1")).await {
            Ok(h1) => h1.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if expected(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the page's heading is still `{text}`"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text_of(browser: &Client, css: &str) -> String {
    // Found on a page that a navigation then replaces, an element goes stale:
    // look again until the text can be read.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            return text;
        }
        assert!(Instant::now() < deadline, "no `{css}` on the page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A relay whose console needs [`TOKEN`].
async fn a_relay_with_a_token(backend: Backend) -> TestApp {
    TestApp::build(backend, "console")
        .env("HOOKRELAY_ADMIN_TOKEN", TOKEN)
        .start()
        .await
}

/// A new Chromium session (its profile in `profile`), logged in to `relay`'s
/// console and on its first page.
async fn logged_in(driver: &Driver, profile: &std::path::Path, relay: &Relay) -> Client {
    let browser = driver.browser(profile).await;
    let base = format!("http://127.0.0.1:{}", relay.admin.port());
    browser.goto(&format!("{base}/ui/")).await.expect("goto");
    let token = browser
        .wait()
        .for_element(Locator::Id("token"))
        .await
        .expect("the login form");
    token.send_keys(TOKEN).await.expect("type token");
    screenshot(&browser, "01-login").await;
    click(&browser, Locator::Id("login"), "log in").await;
    heading(&browser, |h| h == "Events").await;
    browser
}

async fn an_operator_finds_an_order_from_the_keyboard_and_sees_its_late_status_flagged(
    backend: Backend,
) {
    let Some(driver) = Driver::start() else {
        return;
    };
    let mut app = a_relay_with_a_token(backend).await;
    // An order that succeeded and then got a late "pending".
    for status in ["COMPLETE", "OPEN"] {
        let body = whitepay_order_at("8f3a-order", status);
        assert_eq!(app.relay.post_whitepay(&body).await.0, 200);
    }
    let first = app.consumer.collect(2, Duration::from_secs(20)).await;
    assert_eq!(first.len(), 2, "the order's two events were published");

    let profile = tempfile::tempdir().expect("profile");
    let browser = logged_in(&driver, profile.path(), &app.relay).await;

    // Find the order from the keyboard: type into the focused search box, Enter.
    let search = browser
        .wait()
        .for_element(Locator::Css("input[name=q]"))
        .await
        .expect("search box");
    search
        .send_keys("8f3a-order\u{E007}")
        .await
        .expect("search");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !browser
        .current_url()
        .await
        .expect("url")
        .as_str()
        .contains("q=8f3a-order")
    {
        assert!(Instant::now() < deadline, "the search was not submitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = browser
        .find_all(Locator::Css("tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2, "both events of the order");
    screenshot(&browser, "02-events").await;

    // Its detail, then the order's timeline.
    click(&browser, Locator::Css("tbody tr td a"), "open detail").await;
    heading(&browser, |h| h.starts_with("Event ")).await;
    let page = browser.source().await.expect("source");
    assert!(page.contains("CloudEvent") && page.contains("verified"));
    screenshot(&browser, "03-detail").await;
    click(&browser, Locator::LinkText("8f3a-order"), "open timeline").await;
    heading(&browser, |h| h == "Subject 8f3a-order").await;
    let flagged = browser
        .find_all(Locator::Css(".backwards"))
        .await
        .expect("flags");
    assert_eq!(flagged.len(), 1, "the late pending is flagged");
    screenshot(&browser, "04-timeline").await;
    browser.close().await.expect("close browser");
}

async fn an_operator_bulk_replays_dead_events_after_the_dry_run_count(backend: Backend) {
    let Some(driver) = Driver::start() else {
        return;
    };
    let Some(limit) = BrokerMaxMessageSize::set(64 * 1024).await else {
        assert!(std::env::var_os("CI").is_none(), "CI must run rabbitmqctl");
        return;
    };
    let mut app = a_relay_with_a_token(backend).await;
    app.relay.wait_broker_connected().await;
    // An event the broker refuses as too large, so it goes dead.
    let big = whitepay_order(&format!("big-{}", "x".repeat(100 * 1024)));
    assert_eq!(app.relay.post_whitepay(&big).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.relay.outbox_count(Some("dead")) < 1 {
        assert!(
            Instant::now() < deadline,
            "the oversized row did not go dead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let profile = tempfile::tempdir().expect("profile");
    let browser = logged_in(&driver, profile.path(), &app.relay).await;

    // Bulk replay of dead events: the count first, then the replay.
    drop(limit);
    let _unlimited = BrokerMaxMessageSize::unchanged().await;
    click(
        &browser,
        Locator::LinkText("Dead & unrecognized"),
        "open dead",
    )
    .await;
    click(&browser, Locator::Id("replay-dead"), "dry run").await;
    let matched = text_of(&browser, "#matched").await;
    assert!(matched.starts_with("1 events match"), "{matched}");
    assert_eq!(
        app.relay.outbox_count(Some("dead")),
        1,
        "the count changed nothing"
    );
    screenshot(&browser, "05-replay-count").await;
    click(&browser, Locator::Id("confirm"), "replay").await;
    let replayed = text_of(&browser, "#replayed").await;
    assert!(
        replayed.starts_with("1 events are pending again"),
        "{replayed}"
    );
    screenshot(&browser, "06-replayed").await;

    let delivery = app
        .consumer
        .next(Duration::from_secs(30))
        .await
        .expect("the dead event, published after the replay");
    assert_eq!(
        raw_payload(&delivery.data).expect("payload").as_bytes(),
        &big[..]
    );
    browser.close().await.expect("close browser");
}

async fn an_operator_sees_a_gap_and_asks_the_provider_after_the_dry_run(backend: Backend) {
    use crate::recovery::{after_silence, wait_for_a_manual_gap};
    let Some(driver) = Driver::start() else {
        return;
    };
    let fake = FakeCcpayment::start(crate::recovery::SECRET).await;
    fake.deliver_to("http://127.0.0.1:9/unused");
    let (mut config, _exchange, _dir) = after_silence(
        backend,
        "console_recovery",
        &fake,
        &[("RECOVER", "manual")],
        Duration::from_secs(600),
    )
    .await;
    config
        .env
        .push(("HOOKRELAY_ADMIN_TOKEN".to_owned(), TOKEN.to_owned()));
    let relay = Relay::start(&config);
    wait_for_a_manual_gap(&config).await;

    let profile = tempfile::tempdir().expect("profile");
    let browser = logged_in(&driver, profile.path(), &relay).await;
    click(&browser, Locator::LinkText("Sources"), "open sources").await;
    heading(&browser, |h| h == "Sources").await;
    let gaps = text_of(&browser, "#gaps").await;
    assert!(gaps.contains("cc") && gaps.contains("manual"), "{gaps}");
    screenshot(&browser, "07-gaps").await;
    click(&browser, Locator::Id("recover-cc"), "dry run").await;
    let dry = text_of(&browser, "#dry-run").await;
    assert!(dry.starts_with("Dry run for cc"), "{dry}");
    let windows = text_of(&browser, "#report-gaps tbody tr").await;
    assert!(windows.contains("manual"), "{windows}");
    assert!(fake.resends().is_empty(), "the dry run asked nothing");
    screenshot(&browser, "08-recovery-dry-run").await;
    click(&browser, Locator::Id("confirm-recover"), "ask the provider").await;
    let asked = text_of(&browser, "#recovered").await;
    assert!(asked.starts_with("Asked the provider of cc"), "{asked}");
    let settled = text_of(&browser, "#report-gaps tbody tr").await;
    assert!(settled.contains("recovered"), "{settled}");
    assert_eq!(fake.resends().len(), 1, "asked once");
    screenshot(&browser, "09-recovered").await;
    browser.close().await.expect("close browser");
}

on_both_backends!(
    an_operator_finds_an_order_from_the_keyboard_and_sees_its_late_status_flagged,
    an_operator_bulk_replays_dead_events_after_the_dry_run_count,
    an_operator_sees_a_gap_and_asks_the_provider_after_the_dry_run,
);
