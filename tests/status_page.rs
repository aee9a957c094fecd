//! The admin status page at `/`, loaded by a real browser (Debian's headless
//! `chromium`): after its script ran, the DOM shows the listeners and routes,
//! every instance with its state, and the recent discovery events; a change in
//! discovery shows on the next load. All data in the DOM comes from the page's
//! own fetch of `/upstreams` and `/status.json` (the HTML carries none), and the
//! page's 2 s timer redraws the same document in place (counted in the DOM).

use crate::support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{admin_get, http_config, write_instances, Backend, TestGateway};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The DOM of `url` after its scripts ran for 6.5 s of virtual time (timers and
/// fetches complete), via `chromium --headless --dump-dom`. Bounded: killed after 60 s.
fn dump_dom(url: &str) -> String {
    assert!(std::path::Path::new(CHROMIUM).exists(), "{CHROMIUM} not found: install Debian's chromium");
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            // Virtual time: the page's 2 s refresh timer fires three times without waiting 6 s.
            "--virtual-time-budget=6500",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {CHROMIUM}: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(out.path()).unwrap()
}

async fn dom(url: String) -> String {
    tokio::task::spawn_blocking(move || dump_dom(&url)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_listeners_instances_states_and_events() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let gw = TestGateway::start(&http_config(
        "[[listener.route]]\npath_prefix = \"/shop/\"\nservice = \"shop\"\nbalance = \"least_request\"\n",
    ))
    .await;
    write_instances(
        &gw.instances_path(),
        &[("shop", "shop-1", a.addr, &[("weight", "3")]), ("shop", "shop-2", b.addr, &[("status", "draining")])],
    );
    gw.wait_live("shop", 1).await;
    let (status, html) = admin_get(gw.admin, "/").await;
    assert_eq!(status, 200);
    assert!(!html.contains("shop-1"), "the HTML itself carries no data; the script fetches it");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "no external assets");

    let url = format!("http://{}/", gw.admin);
    let page = dom(url.clone()).await;
    for want in [
        r#"data-listener="web""#,
        "path_prefix=/shop/",
        "least_request",
        r#"data-service="shop""#,
        r#"<tr data-instance="shop-1" data-state="up">"#,
        r#"<tr data-instance="shop-2" data-state="draining">"#,
        &a.addr.to_string(),
        "weight=3",
        "1 live of 2",
        r#"data-event="resync""#,
        // Health and ejection, as /upstreams reports them per instance.
        "<th>health</th>",
        "<th>reason</th>",
        "<th>times_ejected</th>",
    ] {
        assert!(page.contains(want), "{want:?} not in the rendered page:\n{page}");
    }
    // Redrawn in place by its timer: the same document rendered fresh data several times.
    let refreshes: u32 = page
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refresh count in the page:\n{page}"));
    assert!(refreshes >= 3, "the page refreshed {refreshes} times in 6.5 s");
    // The weight column shows 3 for shop-1.
    let row = page.split(r#"<tr data-instance="shop-1""#).nth(1).unwrap().split("</tr>").next().unwrap();
    assert!(row.contains(r#"<td class="num">3</td>"#), "{row}");

    // A change in discovery: shop-2 leaves, shop-3 comes up.
    write_instances(
        &gw.instances_path(),
        &[("shop", "shop-1", a.addr, &[("weight", "3")]), ("shop", "shop-3", b.addr, &[])],
    );
    gw.wait_live("shop", 2).await;
    let page = dom(url).await;
    assert!(page.contains(r#"<tr data-instance="shop-3" data-state="up">"#), "{page}");
    assert!(!page.contains(r#"data-instance="shop-2""#), "{page}");
    assert!(page.contains("2 live of 2"), "{page}");
}
