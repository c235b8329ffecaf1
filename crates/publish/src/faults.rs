//! A fault-injecting [`ObjectStore`] for tests: wraps a store and makes its n-th write, delete,
//! list or read fail, either before it takes effect or after (it lands, and the caller is told
//! it failed, as when an answer is lost or a disk fills while syncing).
//!
//! It also counts every operation by kind, so a test can run a job once without faults, read how
//! many operations of each kind it made, and then enumerate a fault at each of them.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use object_store::{memory::InMemory, ObjectStoreExt, PutPayload};
//! use strata_publish::faults::{Fault, FaultyStore, Op};
//!
//! let store = FaultyStore::new(Arc::new(InMemory::new()));
//! store.arm(Fault { op: Op::Write, nth: 2, lands: true });
//! let path = object_store::path::Path::from("a");
//! store.put(&path, PutPayload::from_static(b"1")).await.unwrap();
//! // The second write lands, and yet reports a failure.
//! assert!(store.put(&path, PutPayload::from_static(b"2")).await.is_err());
//! assert_eq!(&store.get(&path).await.unwrap().bytes().await.unwrap()[..], b"2");
//! assert_eq!(store.count(Op::Write), 2);
//! # });
//! ```

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// A kind of store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// put, multipart upload, copy, rename (its write side).
    Write,
    /// delete (each path of a delete stream counts once).
    Delete,
    /// list, list with delimiter.
    List,
    /// get, ranged gets, head.
    Read,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Write, Op::Delete, Op::List, Op::Read];

    fn index(self) -> usize {
        match self {
            Op::Write => 0,
            Op::Delete => 1,
            Op::List => 2,
            Op::Read => 3,
        }
    }
}

/// One fault: the `nth` operation of kind `op` (counted from 1 since the store was made or last
/// reset) fails. With `lands`, it is carried out first and then reported as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub op: Op,
    pub nth: u64,
    pub lands: bool,
}

/// The store wrapper; see the module docs.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    counts: [AtomicU64; 4],
    fault: Mutex<Option<Fault>>,
    fired: Mutex<Option<String>>,
}

impl Shared {
    /// Counts one operation; `Some(lands)` when the fault hits it.
    fn tick(&self, op: Op, path: &str) -> Option<bool> {
        let n = self.counts[op.index()].fetch_add(1, Ordering::SeqCst) + 1;
        let fault = (*self.fault.lock().expect("not poisoned"))?;
        if fault.op == op && fault.nth == n {
            *self.fired.lock().expect("not poisoned") = Some(format!("{op:?} {path}"));
            Some(fault.lands)
        } else {
            None
        }
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(FaultyStore { inner, shared: Arc::default() })
    }

    /// Sets the fault to inject (replacing any other) and restarts the counts.
    pub fn arm(&self, fault: Fault) {
        self.reset();
        *self.shared.fault.lock().expect("not poisoned") = Some(fault);
    }

    /// Removes the fault and restarts the counts.
    pub fn disarm(&self) {
        self.reset();
        *self.shared.fault.lock().expect("not poisoned") = None;
    }

    fn reset(&self) {
        for c in &self.shared.counts {
            c.store(0, Ordering::SeqCst);
        }
        *self.shared.fired.lock().expect("not poisoned") = None;
    }

    /// How many operations of this kind were made since the last reset.
    pub fn count(&self, op: Op) -> u64 {
        self.shared.counts[op.index()].load(Ordering::SeqCst)
    }

    /// The operation the fault hit, if it fired: `"<op> <path>"`.
    pub fn fired(&self) -> Option<String> {
        self.shared.fired.lock().expect("not poisoned").clone()
    }

    fn tick(&self, op: Op, path: &str) -> Option<bool> {
        self.shared.tick(op, path)
    }

    fn injected(op: Op, path: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "FaultyStore",
            source: format!("injected fault on {op:?} of {path}").into(),
        }
    }

    /// Runs `f` under the fault rules for one operation on `path`.
    async fn guard<T>(
        &self,
        op: Op,
        path: &Path,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.tick(op, path.as_ref()) {
            None => f.await,
            Some(false) => Err(Self::injected(op, path.as_ref())),
            Some(true) => {
                let _ = f.await;
                Err(Self::injected(op, path.as_ref()))
            }
        }
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.guard(Op::Write, location, self.inner.put_opts(location, payload, opts)).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // The upload is one write; its fault lands on the start (before anything is written).
        match self.tick(Op::Write, location.as_ref()) {
            None => self.inner.put_multipart_opts(location, opts).await,
            Some(_) => Err(Self::injected(Op::Write, location.as_ref())),
        }
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.guard(Op::Read, location, self.inner.get_opts(location, options)).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.guard(Op::Read, location, self.inner.get_ranges(location, ranges)).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // One path at a time, so that each delete is counted (and can fail) on its own.
        let inner = Arc::clone(&self.inner);
        let shared = Arc::clone(&self.shared);
        locations
            .then(move |p| {
                let (inner, shared) = (Arc::clone(&inner), Arc::clone(&shared));
                async move {
                    let p = p?;
                    let hit = shared.tick(Op::Delete, p.as_ref());
                    if hit == Some(false) {
                        return Err(Self::injected(Op::Delete, p.as_ref()));
                    }
                    let one = futures::stream::once(futures::future::ready(Ok(p.clone()))).boxed();
                    let r: Result<Vec<Path>> = inner.delete_stream(one).try_collect().await;
                    match (r, hit) {
                        (_, Some(true)) => Err(Self::injected(Op::Delete, p.as_ref())),
                        (Ok(_), _) => Ok(p),
                        (Err(e), _) => Err(e),
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.tick(Op::List, &at) {
            None => self.inner.list(prefix),
            Some(_) => {
                let e = Self::injected(Op::List, &at);
                futures::stream::once(async move { Err(e) }).boxed()
            }
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.tick(Op::List, &at) {
            None => self.inner.list_with_offset(prefix, offset),
            Some(_) => {
                let e = Self::injected(Op::List, &at);
                futures::stream::once(async move { Err(e) }).boxed()
            }
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        self.guard(Op::List, &at, self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.guard(Op::Write, to, self.inner.copy_opts(from, to, options)).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.guard(Op::Write, to, self.inner.rename_opts(from, to, options)).await
    }
}
