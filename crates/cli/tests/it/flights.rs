//! The flights example (`testdata/flights`), end to end: facts with a derived business date and a
//! tenant partition, a snapshot reference, a change-file reference, an effective-dated reference
//! published with `strata publish`, and a model joining them, run full, one day at a time, after
//! a correction, after the snapshot changed, and as a backfill pinned `as_originally_run`; on
//! local disk and on S3.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, StringArray};

use crate::harness::Env;
use crate::pipeline::{binding_line as binding, copy_dir, csv, write_parquet};

/// Days since 1970-01-01 of `YYYY-MM-DD`.
fn day(s: &str) -> i32 {
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

/// The example in the env's directory, with `planes` published as the lake's reference: tail N1
/// was an A320 until 2026-01-02 and is an A321neo from then on.
fn flights(env: &Env) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/flights");
    let dst = env.path("flights");
    copy_dir(&src, &dst, &[]);
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("tail", Arc::new(StringArray::from(vec!["N1", "N1", "N2"]))),
        ("model", Arc::new(StringArray::from(vec!["A320", "A321neo", "B737"]))),
        (
            "valid_from",
            Arc::new(Date32Array::from(vec![
                day("2020-01-01"),
                day("2026-01-02"),
                day("2020-01-01"),
            ])),
        ),
        ("valid_to", Arc::new(Date32Array::from(vec![Some(day("2026-01-02")), None, None]))),
    ];
    let path = env.path("planes.parquet");
    write_parquet(&path, columns);
    env.ok(&["publish", "planes", "--from", path.to_str().unwrap()]);
    dst.join("strata.toml").display().to_string()
}

const DELAYS: &str = "SELECT flight_date, tenant, origin_city, carrier, plane, flights, \
                      total_delay FROM delays ORDER BY 1, 2, 3, 4, 5";

fn the_flights_example(make: impl Fn() -> Env) {
    // Full.
    let env = make();
    let toml = flights(&env);
    env.ok(&["run", "--pipeline", &toml]);
    let full = csv(&env, DELAYS);
    assert_eq!(
        full,
        "flight_date,tenant,origin_city,carrier,plane,flights,total_delay\n\
         2026-01-01,east,New York,American,A320,1,5\n\
         2026-01-01,east,New York,United,B737,1,30\n\
         2026-01-01,west,San Francisco,United,B737,1,-2\n\
         2026-01-02,east,New York,American,A321neo,1,0\n\
         2026-01-02,west,Los Angeles,American,A321neo,1,7\n\
         2026-01-02,west,San Francisco,United,B737,1,12\n\
         2026-01-03,east,Boston,American,A321neo,1,3\n\
         2026-01-03,east,New York,United,,1,1\n\
         2026-01-03,west,San Francisco,United,B737,1,45\n",
        "the effective-dated plane is the one valid on each flight's date"
    );
    assert_eq!(
        csv(&env, "SELECT flight_id, _rule FROM \"flights.quarantine\""),
        "flight_id,_rule\n304,derive\n"
    );
    let files = env.ok(&["files", "delays"]);
    assert!(files.contains("flight_date=2026-01-02/tenant=west/"), "{files}");
    assert!(binding(&env, "planes").starts_with("reads      planes v1 (latest: published by run "));
    assert!(binding(&env, "airports").contains("airports v1 (latest: computed by this run"));

    // One day at a time, on another lake: every day's rows are the full run's.
    let daily = make();
    let daily_toml = flights(&daily);
    for d in ["2026-01-01", "2026-01-02", "2026-01-03"] {
        daily.ok(&["run", "--pipeline", &daily_toml, "--date", d]);
    }
    assert_eq!(csv(&daily, DELAYS), full);

    // A correction file: flight 202 was 20 minutes late, not 12.
    std::fs::write(
        env.path("flights/data/flights/2026-01-02-fix.csv"),
        "year,month,day,flight_id,tenant,carrier,origin,tail,dep_delay\n\
         2026,1,2,202,west,UA,SFO,N2,20\n",
    )
    .unwrap();
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-01-02"]);
    let sfo = "SELECT total_delay FROM delays WHERE flight_date = DATE '2026-01-02' AND \
               origin_city = 'San Francisco'";
    assert_eq!(csv(&env, sfo), "total_delay\n20\n", "the correction wins");

    // The airports snapshot changes; a new day binds the new snapshot, and show-run says so.
    std::fs::write(
        env.path("flights/data/airports/2026-01-04.csv"),
        "code,city\nJFK,New York JFK\nSFO,San Francisco\nLAX,Los Angeles\nBOS,Boston\n",
    )
    .unwrap();
    std::fs::write(
        env.path("flights/data/flights/2026-01-04.csv"),
        "year,month,day,flight_id,tenant,carrier,origin,tail,dep_delay\n\
         2026,1,4,401,east,AA,JFK,N1,8\n",
    )
    .unwrap();
    env.ok(&["run", "--pipeline", &toml, "--date", "2026-01-04"]);
    let line = binding(&env, "airports");
    assert!(line.contains("(latest: computed by this run, rows "), "{line}");
    assert!(!line.contains("airports v1 "), "a new version: {line}");
    let jfk = "SELECT DISTINCT flight_date, origin_city FROM delays WHERE origin_city LIKE \
               'New York%' ORDER BY 1";
    assert_eq!(
        csv(&env, jfk),
        "flight_date,origin_city\n2026-01-01,New York\n2026-01-02,New York\n\
         2026-01-03,New York\n2026-01-04,New York JFK\n"
    );

    // Days first computed with different airports cannot be backfilled as one run.
    let before = env.snapshot();
    let line =
        env.user_error(&["run", "--pipeline", &toml, "--from", "2026-01-03", "--to", "2026-01-04"]);
    assert!(
        line.contains("airports is pinned as_originally_run")
            && line.contains("v1 by ")
            && line.contains("--refresh-references"),
        "{line}"
    );
    assert_eq!(env.snapshot(), before, "refused before anything is written");
    // A backfill of the first three days reads the airports their runs read.
    env.ok(&["run", "--pipeline", &toml, "--from", "2026-01-01", "--to", "2026-01-03"]);
    let line = binding(&env, "airports");
    assert!(
        line.starts_with("reads      airports v1 (as_originally_run: published by run "),
        "{line}"
    );
    assert!(line.contains(", as run "), "{line}");
    assert_eq!(
        csv(&env, jfk),
        "flight_date,origin_city\n2026-01-01,New York\n2026-01-02,New York\n\
         2026-01-03,New York\n2026-01-04,New York JFK\n"
    );
    assert_eq!(csv(&env, sfo), "total_delay\n20\n", "the correction stays");
    // ...unless the references are refreshed.
    env.ok(&[
        "run",
        "--pipeline",
        &toml,
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-03",
        "--refresh-references",
    ]);
    assert_eq!(
        csv(&env, "SELECT count(*) AS n FROM delays WHERE origin_city = 'New York JFK'"),
        "n\n5\n",
        "every JFK row of the four days"
    );
}

#[test]
fn the_flights_example_runs_full_daily_corrected_and_backfilled() {
    the_flights_example(Env::new);
}

#[test]
fn the_flights_example_runs_full_daily_corrected_and_backfilled_s3() {
    if Env::s3().is_some() {
        the_flights_example(|| Env::s3().unwrap());
    }
}
