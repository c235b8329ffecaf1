//! S3 configuration and failures as a user meets them.

use crate::harness::{rows, Env};

fn strata() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    c.env_remove("STRATA_LAKE").env_remove("STRATA_CRASH_AT");
    c
}

#[test]
fn unreachable_endpoint_is_one_clear_line_and_exit_2() {
    // Nothing listens on port 1 of the loopback address.
    let out = strata()
        .args(["--lake", "s3://some-bucket/lake", "datasets"])
        .env("AWS_ENDPOINT", "http://127.0.0.1:1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "id")
        .env("AWS_SECRET_ACCESS_KEY", "very-secret-value-1")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach http://127.0.0.1:1") && err.contains("check AWS_ENDPOINT"),
        "{err}"
    );
    assert!(!err.contains("very-secret-value-1"));
}

#[test]
fn bad_lake_urls_are_user_errors() {
    for (url, needle) in [("s3://", "names no bucket"), ("gs://bucket/x", "not supported")] {
        let out = strata().args(["--lake", url, "datasets"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{url}: {err}");
    }
}

#[test]
fn missing_bucket_is_one_clear_line_and_exit_2() {
    if Env::s3().is_none() {
        return;
    }
    let out = strata()
        .args(["--lake", "s3://no-such-bucket-strata/x", "versions", "orders"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("the bucket does not exist"), "{err}");
}

#[test]
fn credentials_never_appear_in_output_or_in_the_lake() {
    let Some(mut env) = Env::s3() else { return };
    let secret = "s3cr3t-Sentinel-4f1d9a";
    env.vars.push(("AWS_SECRET_ACCESS_KEY".into(), secret.into()));
    env.orders_file("a.parquet", &rows(1, 3, "2026-01-01", 1));
    let mut outputs = Vec::new();
    for args in [
        &["publish", "orders", "--from", "a.parquet", "--partition-by", "order_date", "--json"][..],
        &["versions", "orders", "--json"],
        &["history", "orders", "--json"],
        &["files", "orders", "--json"],
        &["verify", "orders", "--json"],
        &["query", "SELECT * FROM orders"],
        &["rollback", "orders", "--to", "7"],
        &["query", "SELECT * FROM \"orders@9\""],
    ] {
        let out = env.run(args);
        outputs.push(String::from_utf8_lossy(&out.stdout).to_string());
        outputs.push(String::from_utf8_lossy(&out.stderr).to_string());
    }
    for o in &outputs {
        assert!(!o.contains(secret), "secret leaked: {o}");
    }
    // No object strata wrote contains it.
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lake =
            strata_publish::Lake::open(&env.lake_url, strata_publish::OpenMode::Existing).unwrap();
        let metas: Vec<_> = lake.store().list(None).try_collect().await.unwrap();
        assert!(metas.len() >= 3);
        for m in metas {
            let bytes = lake.store().get(&m.location).await.unwrap().bytes().await.unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret",
                m.location
            );
        }
    });
}
