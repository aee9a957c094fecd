//! Balancing through real sockets: round-robin, weighted and hash spread requests
//! over real backends as the pickers promise.

use crate::support;

use std::collections::HashMap;

use support::{client, get, http_config, write_instances, Backend, TestGateway};

async fn three_backends() -> Vec<Backend> {
    vec![Backend::start("b1").await, Backend::start("b2").await, Backend::start("b3").await]
}

async fn counts(gw: &TestGateway, n: usize, path: &str) -> HashMap<String, usize> {
    let c = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, body) = get(&c, &gw.url(path)).await;
        assert_eq!(status, 200, "{body}");
        *seen.entry(body).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let b = three_backends().await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\n")).await;
    write_instances(
        &gw.instances_path(),
        &[("s", "1", b[0].addr, &[]), ("s", "2", b[1].addr, &[]), ("s", "3", b[2].addr, &[])],
    );
    gw.wait_live("s", 3).await;
    let seen = counts(&gw, 300, "/").await;
    // Each worker rotates exactly on its own (a cursor per core): over the two
    // workers' shares an instance is at most one request off its third.
    within(&seen, &[("b1", 100), ("b2", 100), ("b3", 100)], 1);
}

/// Every backend of `expected` got its count ± `off`, and no other answered.
fn within(seen: &HashMap<String, usize>, expected: &[(&str, usize)], off: usize) {
    assert_eq!(seen.len(), expected.len(), "{seen:?}");
    for &(name, n) in expected {
        let got = seen.get(name).copied().unwrap_or(0);
        assert!(got.abs_diff(n) <= off, "{name}: {got}, expected {n} ± {off}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_weights() {
    let b = three_backends().await;
    let gw = TestGateway::start(&http_config("[[listener.route]]\nservice = \"s\"\nbalance = \"weighted\"\n")).await;
    write_instances(
        &gw.instances_path(),
        &[
            ("s", "1", b[0].addr, &[("weight", "1")]),
            ("s", "2", b[1].addr, &[("weight", "2")]),
            ("s", "3", b[2].addr, &[("weight", "3")]),
        ],
    );
    gw.wait_live("s", 3).await;
    let seen = counts(&gw, 600, "/").await;
    // nginx's smooth sequence for 1:2:3 (c b a c b c) puts every instance within one
    // of its share in any run of picks; two workers walk it each on their own.
    within(&seen, &[("b1", 100), ("b2", 200), ("b3", 300)], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_is_sticky_and_moves_few_keys() {
    let b = three_backends().await;
    let gw = TestGateway::start(&http_config(
        "[[listener.route]]\nservice = \"s\"\nbalance = \"hash\"\nhash_key = \"header:x-user\"\n",
    ))
    .await;
    let all = [("s", "1", b[0].addr, &[][..]), ("s", "2", b[1].addr, &[][..]), ("s", "3", b[2].addr, &[][..])];
    write_instances(&gw.instances_path(), &all);
    gw.wait_live("s", 3).await;
    let c = client();
    let ask = |user: usize| {
        let c = c.clone();
        let url = gw.url("/");
        async move {
            let req =
                http::Request::get(url).header("x-user", format!("user-{user}")).body(Default::default()).unwrap();
            support::request(&c, req).await
        }
    };
    const KEYS: usize = 600;
    let mut before = Vec::with_capacity(KEYS);
    for user in 0..KEYS {
        let (status, first) = ask(user).await;
        assert_eq!(status, 200);
        // The same key lands on the same backend every time.
        assert_eq!(ask(user).await.1, first);
        before.push(first);
    }
    let spread: HashMap<&String, usize> = before.iter().fold(HashMap::new(), |mut m, b| {
        *m.entry(b).or_default() += 1;
        m
    });
    assert_eq!(spread.len(), 3, "{spread:?}");

    // Remove b2 from the instances file.
    write_instances(&gw.instances_path(), &[all[0], all[2]]);
    gw.wait_live("s", 2).await;
    let mut moved = 0;
    for (user, was) in before.iter().enumerate() {
        let (status, now) = ask(user).await;
        assert_eq!(status, 200);
        assert_ne!(now, "b2");
        if was != "b2" && &now != was {
            moved += 1;
        }
    }
    let on_b2 = before.iter().filter(|b| *b == "b2").count();
    let total_moved = on_b2 + moved;
    // At most 1/N + 10% of keys move, and keys of the remaining backends (almost) never do.
    assert!(total_moved as f64 <= KEYS as f64 * (1.0 / 3.0 + 0.10), "moved {total_moved} of {KEYS}");
    assert!(moved as f64 <= KEYS as f64 * 0.02, "{moved} keys moved between remaining backends");
}
