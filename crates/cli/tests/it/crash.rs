//! The real binary, aborted at each named crash point of a publish, leaves the published state
//! exactly as it was; the next publish succeeds and nothing of the crashed run is visible.

use crate::harness::{rows, Env};

#[test]
fn crash_points_of_publish_leave_current_untouched() {
    crash_points(Env::new);
}

#[test]
fn crash_points_of_publish_leave_current_untouched_s3() {
    if Env::s3().is_some() {
        crash_points(|| Env::s3().unwrap());
    }
}

fn crash_points(make: impl Fn() -> Env) {
    for point in ["mid-file-write", "after-stage", "after-version-record"] {
        let env = make();
        env.orders_file("v1.parquet", &rows(1, 3, "2026-01-01", 10));
        env.orders_file("v2.parquet", &rows(10, 5, "2026-01-01", 99));
        env.ok(&["publish", "orders", "--from", "v1.parquet", "--partition-by", "order_date"]);
        let history = env.ok(&["history", "orders", "--json"]);
        let out = env
            .cmd(&["publish", "orders", "--from", "v2.parquet"])
            .env("STRATA_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: the process must die");
        assert_eq!(out.status.code(), None, "{point}: killed by a signal, not an exit");
        assert!(String::from_utf8_lossy(&out.stderr).contains(point));
        assert_eq!(env.ok(&["history", "orders", "--json"]), history, "{point}: history untouched");
        assert_eq!(
            env.ok(&[
                "query",
                "SELECT count(*) AS n, max(amount) AS m FROM orders",
                "--format",
                "csv"
            ]),
            "n,m\n3,10\n",
            "{point}"
        );
        let versions: serde_json::Value =
            serde_json::from_str(&env.ok(&["versions", "orders", "--json"])).unwrap();
        assert_eq!(versions.as_array().unwrap().len(), 1, "{point}");
        env.ok(&["verify", "orders"]);
        // The same publish again, without the crash, succeeds and is the only new version.
        let out = env.ok(&["publish", "orders", "--from", "v2.parquet"]);
        assert!(out.contains("1 partition(s) written"), "{point}: {out}");
        assert_eq!(
            env.ok(&[
                "query",
                "SELECT count(*) AS n, max(amount) AS m FROM orders",
                "--format",
                "csv"
            ]),
            "n,m\n5,99\n",
            "{point}"
        );
        let versions: serde_json::Value =
            serde_json::from_str(&env.ok(&["versions", "orders", "--json"])).unwrap();
        assert_eq!(versions.as_array().unwrap().len(), 2, "{point}");
    }
}

#[test]
fn crash_after_flip_has_published() {
    let env = Env::new();
    env.orders_file("v1.parquet", &rows(1, 3, "2026-01-01", 10));
    let out = env
        .cmd(&["publish", "orders", "--from", "v1.parquet"])
        .env("STRATA_CRASH_AT", "after-flip")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None);
    // The flip is the commit point: the version is published even though the process died.
    assert_eq!(env.ok(&["query", "SELECT count(*) AS n FROM orders", "--format", "csv"]), "n\n3\n");
    env.ok(&["verify", "orders"]);
}

#[test]
fn crash_before_the_batch_manifest_leaves_no_batch() {
    let env = Env::new();
    let file = format!(
        "{}/../../testdata/shop/data/orders/orders-2026-01-02.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = env
        .cmd(&["land", "orders", &file])
        .env("STRATA_CRASH_AT", "land-before-manifest")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed");
    // The batch does not exist yet: landing again lands it (not "already landed").
    let again = env.ok(&["land", "orders", &file, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(v[0]["status"], "landed");
    assert_eq!(v[0]["rows"], 6);
    let third = env.ok(&["land", "orders", &file, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&third).unwrap();
    assert_eq!(v[0]["status"], "already_landed");
}
