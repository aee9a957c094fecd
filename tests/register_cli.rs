//! `switchyard register` as users call it: every flag lands in etcd as documented
//! (`--id`, `--ttl` as the lease's TTL, repeated `--meta`, `--prefix`, the default
//! id), and bad values are refused before anything is written, naming the flag.

use crate::support;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use etcd_client::GetOptions;
use support::etcd::Etcd;
use support::wait_until;

fn register(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("register")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start switchyard register")
}

fn register_output(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard")).arg("register").args(args).output().expect("run switchyard register")
}

/// The value and lease TTL (granted, in seconds) of `key`, once it exists.
async fn registered(etcd: &Etcd, key: &str) -> (serde_json::Value, i64) {
    let mut kv = etcd.client().await;
    wait_until("the registration is in etcd", Duration::from_secs(10), async || {
        kv.get(key, None).await.is_ok_and(|r| !r.kvs().is_empty())
    })
    .await;
    let res = kv.get(key, None).await.unwrap();
    let entry = &res.kvs()[0];
    let value: serde_json::Value = serde_json::from_slice(entry.value()).expect("a JSON value");
    let ttl = kv.lease_time_to_live(entry.lease(), None).await.unwrap().granted_ttl();
    (value, ttl)
}

#[tokio::test]
async fn every_flag_lands_in_etcd() {
    let etcd = Etcd::start().await;
    let url = etcd.url();
    let mut child = register(&[
        "--etcd",
        &url,
        "--service",
        "billing",
        "--addr",
        "127.0.0.1:7001",
        "--id",
        "billing-a",
        "--ttl",
        "4",
        "--meta",
        "zone=eu-1",
        "--meta",
        "weight=7",
        "--prefix",
        "/custom/",
    ]);
    let (value, ttl) = registered(&etcd, "/custom/billing/billing-a").await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ttl, 4, "--ttl is the lease's TTL");
    assert_eq!(value["id"], "billing-a");
    assert_eq!(value["name"], "billing");
    assert_eq!(value["addr"], "127.0.0.1:7001");
    assert_eq!(value["metadata"]["zone"], "eu-1");
    assert_eq!(value["metadata"]["weight"], "7");
    assert!(value["metadata"].get("status").is_none(), "a running registration is up: {value}");

    // Without --id: `{hostname}-{port}`; without --ttl: 10 s; without --prefix: /services/.
    let mut child = register(&["--etcd", &url, "--service", "plain", "--addr", "127.0.0.1:7002"]);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let id = format!("{hostname}-7002");
    let (value, ttl) = registered(&etcd, &format!("/services/plain/{id}")).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!((value["id"].as_str(), ttl), (Some(id.as_str()), 10));
}

#[tokio::test]
async fn bad_flags_are_refused_naming_the_flag_and_write_nothing() {
    let etcd = Etcd::start().await;
    let url = etcd.url();
    let base = ["--etcd", url.as_str(), "--service", "svc", "--addr", "127.0.0.1:7003"];
    let cases: &[(&[&str], &str)] = &[
        (&["--meta", "novalue"], "\"novalue\" is not KEY=VALUE"),
        (&["--meta", "=v"], "is not KEY=VALUE"),
        (&["--ttl", "0"], "ttl: must be at least 1 second"),
        (&["--ttl", "x"], "--ttl"),
        (&["--drain-seconds=-1"], "drain-seconds: must be 0..86400"),
        (&["--dial-timeout", "0"], "dial-timeout"),
        (&["--id", ""], "id: must not be empty"),
        (&["--username", "u"], "--username and --password go together"),
    ];
    for (extra, expected) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = register_output(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    let bad_addr = register_output(&["--etcd", &url, "--service", "svc", "--addr", "not-an-address", "--id", "x"]);
    assert!(!bad_addr.status.success());
    assert!(
        String::from_utf8_lossy(&bad_addr.stderr).contains("addr"),
        "{}",
        String::from_utf8_lossy(&bad_addr.stderr)
    );
    let bad_service = register_output(&["--etcd", &url, "--service", "a/b", "--addr", "127.0.0.1:7003"]);
    assert!(String::from_utf8_lossy(&bad_service.stderr).contains("service: \"a/b\" is not a service name"));

    let mut kv = etcd.client().await;
    let all = kv.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
    assert!(
        all.kvs().is_empty(),
        "a refused registration wrote {:?}",
        all.kvs().iter().map(|k| k.key_str().unwrap_or("?").to_string()).collect::<Vec<_>>()
    );
}
