//! Runs the conformance suite on each backend. Each test gets a fresh, empty lake.

use strata_publish::{Lake, OpenMode};

/// Declares one `#[tokio::test]` per conformance function for a backend.
macro_rules! conformance_tests {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            conformance_tests!(@each $make;
                first_publish_creates_version_one,
                readers_see_old_or_new_never_a_mix,
                staged_files_are_invisible_until_flip,
                copy_on_write_reuses_untouched_partitions,
                replace_all_must_be_explicit,
                eight_concurrent_publishers_one_winner,
                rollback_is_a_pointer_flip,
                history_records_every_flip,
                verify_catches_changed_byte_and_missing_file,
                crash_between_stage_and_flip_leaves_current_untouched,
                retried_flip_that_landed_is_not_a_conflict,
                corrupt_or_truncated_json_is_reported,
                records_read_again_are_current,
                a_publish_rewrites_only_the_chunks_that_hold_its_partitions,
                records_of_the_pre_release_format_are_refused,
                previewed_records_are_reused_only_while_current,
                schema_conflict_is_refused_and_nothing_changes,
                bad_partition_values_are_refused_and_nothing_changes,
                unknown_dataset_and_version_are_reported,
                pointer_checkpoints_are_a_faithful_cache,
                run_locks_exclude_overlaps_and_take_over_stale_ones,
                commit_rebases_over_disjoint_partitions_only,
                adopting_checkpointed_files_verifies_and_moves_them,
                the_head_is_found_from_any_hint,
                numbered_logs_take_each_number_once_and_find_their_end,
            );
        }
    };
    (@each $make:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some((lake, _guard)) = $make else { return };
                crate::conformance::$name(lake).await;
            }
        )*
    };
}

fn memory() -> Option<(Lake, ())> {
    Some((Lake::open("memory://", OpenMode::Create).expect("memory lake"), ()))
}

fn local() -> Option<(Lake, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open(dir.path().to_str().expect("utf-8 path"), OpenMode::Existing)
        .expect("local lake");
    Some((lake, dir))
}

/// A fresh prefix of the S3 bucket named by `STRATA_TEST_S3_URL`, or `None` (with a note) when
/// the variable is unset.
fn s3() -> Option<(Lake, ())> {
    let Ok(base) = std::env::var("STRATA_TEST_S3_URL") else {
        use std::io::Write;
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // Written to the real stderr, past libtest's capture, so that it is always seen.
            let _ = writeln!(
                std::io::stderr(),
                "NOTE: S3 conformance tests SKIPPED: STRATA_TEST_S3_URL is not set. Run \
                 ./scripts/test.sh to start the local S3 test server and run them."
            );
        });
        return None;
    };
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let unique = format!(
        "{}/conformance-{}-{}",
        base.trim_end_matches('/'),
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    Some((Lake::open(&unique, OpenMode::Create).expect("s3 lake"), ()))
}

conformance_tests!(in_memory, memory());
conformance_tests!(local_disk, local());
conformance_tests!(s3_compatible, s3());
