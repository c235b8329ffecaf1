//! Run locks: two runs whose output boundaries overlap never both proceed.
//!
//! A run locks every partition it owns, one object per partition, before it writes anything:
//!
//! ```text
//! _strata/locks/<dataset>/<col>=<value>.json   a partition
//! _strata/locks/<dataset>/_all.json            the whole dataset (runs with no window, and runs
//!                                              owning more than 256 of its partitions)
//! ```
//!
//! Each lock is created with create-if-absent, so of two runs racing for a partition exactly one
//! gets it. A run holding `_all` and a run holding a partition of the same dataset also exclude
//! each other: each writes its own locks first and then looks for the other kind, so at least one
//! of them sees the other and backs off.
//!
//! A lock names its holder (run id, host, pid and the process's start time) and carries a lease
//! that the holder renews while it runs. A lock is **stale** when its lease has expired, or at
//! once when its holder ran on this host and that process is gone. A stale lock is taken over
//! through a create-if-absent takeover marker, so that of several runs finding the same stale
//! lock only one replaces it.
//!
//! Locks are an efficiency and clarity device, not the last line of defence: the pointer log
//! still admits only one flip per entry, and [`crate::Dataset::commit`] refuses to rebase over a
//! partition another run changed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};
use crate::lake::Lake;

/// `format` of a lock object.
pub const LOCK_FORMAT: &str = "strata.lock.v1";
/// Where locks live, relative to the lake root.
pub const LOCKS_DIR: &str = "_strata/locks";
/// The lock name for a whole dataset.
pub const WHOLE: &str = "_all";
/// The lease of a lock unless `STRATA_LOCK_LEASE_SECS` says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);
/// Overrides the lease, in seconds.
pub const LEASE_ENV: &str = "STRATA_LOCK_LEASE_SECS";

/// The wall clock. Locks are the one place below the binary that needs real time (a lease must
/// expire even when the run's clock is pinned), so the caller passes it in.
pub type Clock = fn() -> DateTime<Utc>;

pub use crate::model::LockInfo;

impl LockInfo {
    /// Whether `other` was taken by the same process for the same run.
    pub fn same_holder(&self, other: &LockInfo) -> bool {
        self.run_id == other.run_id
            && self.host == other.host
            && self.pid == other.pid
            && self.pid_start == other.pid_start
    }

    /// A lock for `run_id` held by this process, valid for `lease` from `now`.
    pub fn for_this_process(run_id: &str, now: DateTime<Utc>, lease: Duration) -> Self {
        LockInfo {
            format: LOCK_FORMAT.into(),
            run_id: run_id.into(),
            host: this_host(),
            pid: std::process::id(),
            pid_start: process_start(std::process::id()),
            acquired_at: now,
            expires_at: now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX),
        }
    }
}

/// Why a lock is stale, or `None` when its holder may still be running.
pub fn stale_reason(info: &LockInfo, now: DateTime<Utc>) -> Option<String> {
    stale_reason_with(info, now, &this_host(), process_alive)
}

/// [`stale_reason`] with the host and the process check given: pure, for tests.
pub fn stale_reason_with(
    info: &LockInfo,
    now: DateTime<Utc>,
    host: &str,
    alive: impl Fn(u32, Option<u64>) -> Option<bool>,
) -> Option<String> {
    if info.host == host {
        match alive(info.pid, info.pid_start) {
            Some(false) => return Some(format!("its process {} on {host} is gone", info.pid)),
            // A live process on this host keeps its lock whatever its lease says: a process that
            // was paused (a suspended VM, a frozen container, SIGSTOP) resumes where it was, and
            // taking its lock over would let it publish what another process removed.
            Some(true) => return None,
            None => {}
        }
    }
    if info.expires_at < now {
        return Some(format!("its lease expired at {}", info.expires_at));
    }
    None
}

/// The name of this machine.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Field 22 of `/proc/<pid>/stat` (start time), and whether the process is a zombie.
fn proc_stat(pid: u32) -> std::io::Result<(Option<u64>, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, starttime field 22 (indexes 0 and 19 here).
    let zombie = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
    Ok((fields.get(19).and_then(|s| s.parse().ok()), zombie))
}

fn process_start(pid: u32) -> Option<u64> {
    proc_stat(pid).ok().and_then(|(start, _)| start)
}

/// Whether process `pid` (started at `start`) is running; `None` when this system cannot tell.
pub fn process_alive(pid: u32, start: Option<u64>) -> Option<bool> {
    match proc_stat(pid) {
        Ok((found, zombie)) => Some(!zombie && (start.is_none() || found == start)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::path::Path::new("/proc/self/stat").exists().then_some(false)
        }
        Err(_) => None,
    }
}

/// Whether two output boundaries (dataset → partition keys, empty: the whole dataset) share a
/// partition (pure).
pub fn overlap(a: &BTreeMap<String, Vec<String>>, b: &BTreeMap<String, Vec<String>>) -> bool {
    a.iter().any(|(ds, keys)| {
        b.get(ds).is_some_and(|other| {
            keys.is_empty() || other.is_empty() || keys.iter().any(|k| other.contains(k))
        })
    })
}

/// The most partitions of one dataset a run locks one by one; a run owning more locks the whole
/// dataset, so that a long backfill writes (and renews) one lock per dataset, not one per day.
pub const MAX_PARTITION_LOCKS: usize = 256;

/// The boundary as it is locked (pure): a dataset with more than [`MAX_PARTITION_LOCKS`] owned
/// partitions is locked whole (an empty key list).
pub fn lock_boundary(boundary: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    boundary
        .iter()
        .map(|(ds, keys)| {
            let keys = if keys.len() > MAX_PARTITION_LOCKS { Vec::new() } else { keys.clone() };
            (ds.clone(), keys)
        })
        .collect()
}

/// The lock objects for an output boundary as locked ([`lock_boundary`]): dataset → owned
/// partition keys (empty: the whole dataset).
pub fn lock_paths(boundary: &BTreeMap<String, Vec<String>>) -> Vec<(String, String, Path)> {
    let mut out = Vec::new();
    for (ds, keys) in &lock_boundary(boundary) {
        if keys.is_empty() {
            out.push((ds.clone(), WHOLE.to_string(), lock_path(ds, WHOLE)));
        }
        for k in keys {
            out.push((ds.clone(), k.clone(), lock_path(ds, k)));
        }
    }
    out.sort_by(|a, b| a.2.cmp(&b.2));
    out.dedup_by(|a, b| a.2 == b.2);
    out
}

fn lock_path(dataset: &str, key: &str) -> Path {
    Path::from(format!("{LOCKS_DIR}/{dataset}/{}.json", key.replace('/', ",")))
}

fn takeover_path(lock: &Path) -> Path {
    Path::from(format!("{lock}.takeover"))
}

/// The locks a run holds; renewed in the background until released or dropped.
#[derive(Debug)]
pub struct RunLocks {
    lake: Lake,
    holder: LockInfo,
    paths: Vec<Path>,
    lost: Arc<AtomicBool>,
    stop: Arc<tokio::sync::Notify>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl RunLocks {
    /// Fails if another run took over one of the locks (this process stalled past its lease).
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::LockLost { run_id: self.holder.run_id.clone() });
        }
        Ok(())
    }

    /// Fails unless every lock this run holds on `dataset` is still its own, read from the store
    /// now (not from the renewal's last look): the last word before a flip, so that a process
    /// that was paused past its lease and taken over never publishes.
    pub async fn confirm(&self, dataset: &str) -> Result<()> {
        self.check()?;
        let prefix = format!("{LOCKS_DIR}/{dataset}/");
        for p in self.paths.iter().filter(|p| p.as_ref().starts_with(&prefix)) {
            match read_lock(&self.lake, p).await? {
                Some(found) if found.same_holder(&self.holder) => {}
                _ => {
                    self.lost.store(true, Ordering::SeqCst);
                    return Err(Error::LockLost { run_id: self.holder.run_id.clone() });
                }
            }
        }
        Ok(())
    }

    /// Deletes the locks (those still ours). A renewal in flight finishes first, so that it
    /// cannot recreate a lock after its deletion.
    pub async fn release(mut self) {
        if let Some(h) = self.heartbeat.take() {
            self.stop.notify_one();
            let _ = h.await;
        }
        let holder = &self.holder;
        release_paths(&self.lake, &self.paths, |found| found.same_holder(holder)).await;
    }
}

impl Drop for RunLocks {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

async fn release_paths(lake: &Lake, paths: &[Path], mine: impl Fn(&LockInfo) -> bool) {
    for p in paths {
        if let Ok(Some(info)) = read_lock(lake, p).await {
            if mine(&info) {
                let _ = lake.store().delete(p).await;
            }
        }
    }
}

async fn read_lock(lake: &Lake, path: &Path) -> Result<Option<LockInfo>> {
    let Some(bytes) = lake.get_opt(path).await? else { return Ok(None) };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Corrupt { path: path.to_string(), detail: e.to_string() })
}

/// Deletes a lock; one that is gone already (its holder released it meanwhile) is fine.
async fn delete_if_present(lake: &Lake, path: &Path) -> Result<()> {
    match lake.store().delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(Error::store("delete", path, e)),
    }
}

async fn create(lake: &Lake, path: &Path, info: &LockInfo) -> Result<bool> {
    let body = serde_json::to_vec_pretty(info)
        .map_err(|source| Error::Serialize { what: "lock", source })?;
    lake.create_if_absent(path, body).await
}

fn locked(dataset: &str, key: &str, holder: &LockInfo) -> Error {
    let what = if key == WHOLE {
        format!("dataset {dataset:?} (the whole dataset)")
    } else {
        format!("dataset {dataset:?} partition {key}")
    };
    Error::Locked { what, holder: Box::new(holder.clone()) }
}

/// Takes one lock, taking a stale one over. `Ok(None)` when taken; `Ok(Some(holder))` when a
/// live run holds it.
async fn take(lake: &Lake, path: &Path, info: &LockInfo, clock: Clock) -> Result<Option<LockInfo>> {
    for _ in 0..8 {
        if create(lake, path, info).await? {
            return Ok(None);
        }
        let Some(found) = read_lock(lake, path).await? else { continue };
        // Ours only if this very process holds it (an earlier attempt whose answer was lost):
        // another process acting for the same run (two `strata approve` of one run) is a holder
        // like any other.
        if found.same_holder(info) {
            return Ok(None);
        }
        if stale_reason(&found, clock()).is_none() {
            return Ok(Some(found));
        }
        // Stale: only the run that creates the takeover marker replaces it.
        let marker = takeover_path(path);
        if create(lake, &marker, info).await? {
            // Still the same stale holder? (It may have been replaced meanwhile.)
            if read_lock(lake, path).await?.as_ref() == Some(&found) {
                delete_if_present(lake, path).await?;
            }
            let taken = create(lake, path, info).await?;
            let _ = lake.store().delete(&marker).await;
            if taken {
                return Ok(None);
            }
            continue;
        }
        match read_lock(lake, &marker).await? {
            Some(m) if !m.same_holder(info) && stale_reason(&m, clock()).is_none() => {
                return Ok(Some(m));
            }
            Some(_) => {
                // A takeover that died half-way; clear its marker and try again.
                let _ = lake.store().delete(&marker).await;
            }
            None => {}
        }
    }
    Err(Error::LockContended { path: path.to_string() })
}

/// Locks every partition of `boundary` for `run_id`, or fails naming the live run that holds one
/// (releasing what it took). The locks are renewed every third of `lease` until released.
pub async fn acquire(
    lake: &Lake,
    run_id: &str,
    boundary: &BTreeMap<String, Vec<String>>,
    lease: Duration,
    clock: Clock,
) -> Result<RunLocks> {
    let info = LockInfo::for_this_process(run_id, clock(), lease);
    let mut locks = RunLocks {
        lake: lake.clone(),
        holder: info.clone(),
        paths: Vec::new(),
        lost: Arc::new(AtomicBool::new(false)),
        stop: Arc::new(tokio::sync::Notify::new()),
        heartbeat: None,
    };
    let mut failure = None;
    for (ds, key, path) in lock_paths(boundary) {
        match take(lake, &path, &info, clock).await {
            Ok(None) => locks.paths.push(path),
            Ok(Some(holder)) => {
                failure = Some(locked(&ds, &key, &holder));
                break;
            }
            Err(e) => {
                // The store may have created the lock and only failed to say so: released
                // below like the others (only if it is ours).
                locks.paths.push(path);
                failure = Some(e);
                break;
            }
        }
    }
    // Whole-dataset and partition locks exclude each other.
    if failure.is_none() {
        failure = cross_check(lake, &info, &lock_boundary(boundary), clock).await.err();
    }
    if let Some(e) = failure {
        locks.release().await;
        return Err(e);
    }
    let (lake2, paths, lost, stop) =
        (lake.clone(), locks.paths.clone(), locks.lost.clone(), locks.stop.clone());
    locks.heartbeat = Some(tokio::spawn(async move {
        let every = (lease / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.notified() => return,
            }
            let mut renewed = info.clone();
            renewed.expires_at =
                clock() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
            for p in &paths {
                match read_lock(&lake2, p).await {
                    Ok(Some(found)) if found.same_holder(&info) => {
                        if let Ok(body) = serde_json::to_vec_pretty(&renewed) {
                            let _ = lake2.store().put(p, PutPayload::from(body)).await;
                        }
                    }
                    Ok(_) => lost.store(true, Ordering::SeqCst),
                    Err(_) => {}
                }
            }
        }
    }));
    Ok(locks)
}

async fn cross_check(
    lake: &Lake,
    me: &LockInfo,
    boundary: &BTreeMap<String, Vec<String>>,
    clock: Clock,
) -> Result<()> {
    for (ds, keys) in boundary {
        if keys.is_empty() {
            let prefix = Path::from(format!("{LOCKS_DIR}/{ds}"));
            let found: Vec<Path> = lake.list_paths(&prefix).await?;
            for p in found.iter().filter(|p| p.as_ref().ends_with(".json")) {
                if let Some(other) = read_lock(lake, p).await? {
                    if other.same_holder(me) {
                        continue;
                    }
                    if stale_reason(&other, clock()).is_none() {
                        let key = p.filename().unwrap_or("?").trim_end_matches(".json");
                        return Err(locked(ds, &key.replace(',', "/"), &other));
                    }
                    // A stale partition lock is removed, not skipped: its holder, should it
                    // resume, must find it gone before it flips.
                    remove_stale(lake, p, &other, me).await?;
                }
            }
        } else {
            let whole = lock_path(ds, WHOLE);
            if let Some(other) = read_lock(lake, &whole).await? {
                if !other.same_holder(me) {
                    if stale_reason(&other, clock()).is_none() {
                        return Err(locked(ds, WHOLE, &other));
                    }
                    remove_stale(lake, &whole, &other, me).await?;
                }
            }
        }
    }
    Ok(())
}

/// Removes every stale lock of the lake (its holder died after its run was settled, or before
/// its run recorded anything). Each removal goes through the takeover marker, so a run taking the
/// same lock over at the same moment is never robbed. Returns the locks removed.
pub async fn sweep_stale(lake: &Lake, clock: Clock) -> Result<Vec<String>> {
    let prefix = Path::from(LOCKS_DIR);
    let found: Vec<Path> = lake.list_paths(&prefix).await?;
    let me = LockInfo::for_this_process("recovery", clock(), DEFAULT_LEASE);
    let mut removed = Vec::new();
    for path in found.into_iter().filter(|p| p.as_ref().ends_with(".json")) {
        let Some(info) = read_lock(lake, &path).await? else { continue };
        if stale_reason(&info, clock()).is_none() {
            continue;
        }
        if remove_stale(lake, &path, &info, &me).await? {
            removed.push(path.to_string());
        }
    }
    Ok(removed)
}

/// Removes the stale lock `info` at `path` through its takeover marker, so that a run taking
/// the same lock over at the same moment is never robbed, and so that its holder, should it
/// resume, finds its lock gone ([`RunLocks::confirm`]). False when another process is taking it
/// over, or it changed meanwhile.
async fn remove_stale(lake: &Lake, path: &Path, info: &LockInfo, me: &LockInfo) -> Result<bool> {
    let marker = takeover_path(path);
    if !create(lake, &marker, me).await? {
        return Ok(false); // someone is taking it over right now
    }
    let same = read_lock(lake, path).await?.as_ref() == Some(info);
    if same {
        delete_if_present(lake, path).await?;
    }
    let _ = lake.store().delete(&marker).await;
    Ok(same)
}

/// The lease from `STRATA_LOCK_LEASE_SECS`, or [`DEFAULT_LEASE`].
pub fn lease_from_env() -> Duration {
    std::env::var(LEASE_ENV)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        // A lease longer than a week would keep a crashed run's partitions locked for that
        // long on another host; chrono cannot add much more than that anyway.
        .map(|d| d.min(Duration::from_secs(7 * 24 * 3600)))
        .unwrap_or(DEFAULT_LEASE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_overlap_on_a_shared_partition_or_a_whole_dataset() {
        let b = |items: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
            items
                .iter()
                .map(|(d, ks)| (d.to_string(), ks.iter().map(|k| k.to_string()).collect()))
                .collect()
        };
        let day1 = b(&[("orders", &["d=1"])]);
        assert!(overlap(&day1, &b(&[("orders", &["d=1", "d=2"])])));
        assert!(!overlap(&day1, &b(&[("orders", &["d=2"])])));
        assert!(overlap(&day1, &b(&[("orders", &[])])), "the whole dataset");
        assert!(overlap(&b(&[("orders", &[])]), &day1), "the whole dataset");
        assert!(!overlap(&day1, &b(&[("customers", &[])])), "another dataset");
        assert!(!overlap(&day1, &BTreeMap::new()));
    }
    use chrono::TimeZone;

    fn info(host: &str, expires: i64) -> LockInfo {
        LockInfo {
            format: LOCK_FORMAT.into(),
            run_id: "r1".into(),
            host: host.into(),
            pid: 42,
            pid_start: Some(7),
            acquired_at: Utc.timestamp_opt(0, 0).unwrap(),
            expires_at: Utc.timestamp_opt(expires, 0).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_lock_taken_over_is_caught_before_a_flip() {
        let lake = Lake::open("memory://", crate::OpenMode::Create).unwrap();
        let boundary: BTreeMap<String, Vec<String>> =
            [("orders".to_string(), vec!["d=1".to_string()])].into_iter().collect();
        let held =
            acquire(&lake, "r1", &boundary, Duration::from_secs(60), Utc::now).await.unwrap();
        held.confirm("orders").await.unwrap();
        held.confirm("customers").await.unwrap(); // holds nothing there: nothing to lose
                                                  // Another process took the lock over (this one was paused past its lease elsewhere).
        let other = info("elsewhere", 4_000_000_000);
        let path = lock_path("orders", "d=1");
        let body = serde_json::to_vec(&other).unwrap();
        lake.store().put(&path, PutPayload::from(body)).await.unwrap();
        let err = held.confirm("orders").await.unwrap_err();
        assert!(matches!(err, Error::LockLost { .. }), "{err}");
        assert!(held.check().is_err(), "remembered");
        held.release().await;
        assert!(read_lock(&lake, &path).await.unwrap().is_some(), "the new holder's lock stays");
    }

    #[test]
    fn staleness() {
        let now = Utc.timestamp_opt(100, 0).unwrap();
        let alive = |_, _| Some(true);
        let dead = |_, _| Some(false);
        let unknown = |_, _| None;
        // Same host: a dead process makes the lock stale at once, whatever the lease says.
        assert!(stale_reason_with(&info("h", 1000), now, "h", dead).unwrap().contains("gone"));
        assert!(stale_reason_with(&info("h", 1000), now, "h", alive).is_none());
        assert!(stale_reason_with(&info("h", 1000), now, "h", unknown).is_none());
        // A live process on this host is never stale, even past its lease (it was paused);
        // when this host cannot tell, the lease counts.
        assert!(stale_reason_with(&info("h", 99), now, "h", alive).is_none());
        assert!(stale_reason_with(&info("h", 99), now, "h", unknown).unwrap().contains("lease"));
        // Another host: only the lease counts.
        assert!(stale_reason_with(&info("other", 1000), now, "h", dead).is_none());
        assert!(stale_reason_with(&info("other", 99), now, "h", alive).unwrap().contains("lease"));
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = std::process::id();
        let start = process_start(me);
        if start.is_some() {
            assert_eq!(process_alive(me, start), Some(true));
            assert_eq!(process_alive(me, start.map(|s| s + 1)), Some(false));
            assert_eq!(process_alive(u32::MAX - 1, None), Some(false));
        }
    }

    #[test]
    fn lock_paths_cover_the_boundary() {
        let mut b = BTreeMap::new();
        b.insert("orders".to_string(), vec!["d=2026-01-01".to_string(), "d=2026-01-02".into()]);
        b.insert("daily".to_string(), vec![]);
        let paths: Vec<String> =
            lock_paths(&b).into_iter().map(|(_, _, p)| p.to_string()).collect();
        assert_eq!(
            paths,
            vec![
                "_strata/locks/daily/_all.json",
                "_strata/locks/orders/d=2026-01-01.json",
                "_strata/locks/orders/d=2026-01-02.json"
            ]
        );
    }

    #[test]
    fn a_long_backfill_locks_the_whole_dataset() {
        let days = |n: usize| (0..n).map(|i| format!("d={i:05}")).collect::<Vec<_>>();
        let mut b = BTreeMap::new();
        b.insert("orders".to_string(), days(MAX_PARTITION_LOCKS + 1));
        b.insert("daily".to_string(), days(MAX_PARTITION_LOCKS));
        let locked = lock_boundary(&b);
        assert!(locked["orders"].is_empty(), "locked whole");
        assert_eq!(locked["daily"].len(), MAX_PARTITION_LOCKS, "locked per partition");
        let paths = lock_paths(&b);
        assert_eq!(paths.len(), MAX_PARTITION_LOCKS + 1);
        assert_eq!(
            paths.last().map(|p| p.2.to_string()).as_deref(),
            Some("_strata/locks/orders/_all.json")
        );
    }
}
