//! Checksums on read. The parquet crate verifies page CRCs but does not write them, so strata
//! records its own: the CRC-32 of every [`CRC_BLOCK`] bytes of each data file, computed while
//! the file is written ([`BlockCrc`]) and kept in its [`FileEntry`]. [`CheckedStore`] wraps the
//! store that readers (queries, and stages reading published datasets) go through: every read of
//! a registered file is widened to whole blocks, each block is checked against its CRC, and a
//! file whose size differs from the recorded one is refused before a byte of it is decoded.
//! A flipped bit or a truncated file is therefore an error naming the file, never a wrong value.
//!
//! The decisions ([`BlockCrc`], [`widen`], [`check_blocks`]) are pure; the store only fetches.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result,
};

use crate::model::FileEntry;

/// Bytes covered by one CRC-32.
pub const CRC_BLOCK: u64 = 64 * 1024;

/// The CRC-32 of each [`CRC_BLOCK`] of a byte stream, fed in pieces of any size.
#[derive(Debug, Clone, Default)]
pub struct BlockCrc {
    current: crc32fast::Hasher,
    filled: u64,
    sums: String,
}

impl BlockCrc {
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = (CRC_BLOCK - self.filled) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.current.update(now);
            self.filled += now.len() as u64;
            bytes = rest;
            if self.filled == CRC_BLOCK {
                self.close_block();
            }
        }
    }

    fn close_block(&mut self) {
        let crc = std::mem::take(&mut self.current).finalize();
        self.sums.push_str(&format!("{crc:08x}"));
        self.filled = 0;
    }

    /// The sums as hex, 8 digits a block (the last block may be shorter than [`CRC_BLOCK`]).
    pub fn finish(mut self) -> String {
        if self.filled > 0 {
            self.close_block();
        }
        self.sums
    }
}

/// The CRC-32 sums of `bytes` as [`BlockCrc`] records them.
pub fn block_sums(bytes: &[u8]) -> String {
    let mut b = BlockCrc::default();
    b.update(bytes);
    b.finish()
}

/// `range` of a file of `size` bytes widened to whole blocks.
pub fn widen(range: &Range<u64>, size: u64) -> Range<u64> {
    let start = range.start / CRC_BLOCK * CRC_BLOCK;
    let end = range.end.div_ceil(CRC_BLOCK).saturating_mul(CRC_BLOCK).min(size);
    start..end.max(start)
}

/// A block whose bytes do not have their recorded CRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMismatch {
    pub block: u64,
    pub expected: String,
    pub found: String,
}

/// Checks the blocks of `bytes`, which start at byte `start` (a block boundary) of a file of
/// `size` bytes, against `sums` (8 hex digits a block).
pub fn check_blocks(bytes: &[u8], start: u64, size: u64, sums: &str) -> Result<(), BlockMismatch> {
    let first = start / CRC_BLOCK;
    for (i, chunk) in bytes.chunks(CRC_BLOCK as usize).enumerate() {
        let block = first + i as u64;
        let at = (block * 8) as usize;
        let expected = sums.get(at..at + 8).unwrap_or("");
        let whole =
            chunk.len() as u64 == CRC_BLOCK || block * CRC_BLOCK + chunk.len() as u64 == size;
        if !whole {
            // A read cut short by the store: the size check reports it.
            continue;
        }
        let found = format!("{:08x}", crc32fast::hash(chunk));
        if found != expected {
            return Err(BlockMismatch { block, expected: expected.to_string(), found });
        }
    }
    Ok(())
}

/// What a reader expects of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    size: u64,
    crc32: Option<String>,
}

/// A store wrapper that checks every read of a registered file against its recorded size and
/// block CRCs (see the module docs). Writes, lists and unregistered paths pass through.
pub struct CheckedStore {
    inner: Arc<dyn ObjectStore>,
    expected: RwLock<HashMap<String, Expected>>,
}

impl fmt::Debug for CheckedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckedStore({})", self.inner)
    }
}

impl fmt::Display for CheckedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckedStore({})", self.inner)
    }
}

/// How the message of a failed read check ends: what to do.
pub const DAMAGED_HINT: &str =
    "run `strata verify` on its dataset, then `strata rollback` to a healthy version or restore the file";

fn damaged(path: &Path, detail: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "strata",
        source: format!("data file {path} is damaged: {detail}; {DAMAGED_HINT}").into(),
    }
}

impl CheckedStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(CheckedStore { inner, expected: RwLock::new(HashMap::new()) })
    }

    /// Registers files whose reads are to be checked.
    pub fn expect<'a>(&self, files: impl IntoIterator<Item = &'a FileEntry>) {
        let mut map = self.expected.write().expect("not poisoned");
        for f in files {
            let e = Expected { size: f.size, crc32: f.crc32.clone() };
            map.insert(Path::from(f.path.as_str()).to_string(), e);
        }
    }

    fn expected(&self, path: &Path) -> Option<Expected> {
        self.expected.read().expect("not poisoned").get(path.as_ref()).cloned()
    }

    /// A failed read of a registered file: a file of another size than recorded is named as
    /// damaged (the store's own error for a read past its end says less); other errors stay.
    async fn explain(
        &self,
        path: &Path,
        e: &Expected,
        err: object_store::Error,
    ) -> object_store::Error {
        if matches!(err, object_store::Error::NotFound { .. }) {
            return err;
        }
        match self.inner.head(path).await {
            Ok(meta) if meta.size != e.size => {
                damaged(path, format!("it is {} bytes where {} were recorded", meta.size, e.size))
            }
            _ => err,
        }
    }

    /// Reads `ranges` of a registered file, checked; the bytes of each range only. The ranges,
    /// widened to whole blocks, go to the store in one call, so that it can merge and
    /// parallelise them as it does for unchecked reads.
    async fn checked_ranges(
        &self,
        path: &Path,
        e: &Expected,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>> {
        if let Some(r) = ranges.iter().find(|r| r.end > e.size || r.start > r.end) {
            return Err(damaged(
                path,
                format!("a read of bytes {r:?} of a file recorded as {} bytes", e.size),
            ));
        }
        let wide: Vec<Range<u64>> = match &e.crc32 {
            Some(_) => ranges.iter().map(|r| widen(r, e.size)).collect(),
            None => ranges.to_vec(),
        };
        let got = match self.inner.get_ranges(path, &wide).await {
            Ok(got) => got,
            Err(err) => return Err(self.explain(path, e, err).await),
        };
        let mut out = Vec::with_capacity(ranges.len());
        for ((range, wide), bytes) in ranges.iter().zip(&wide).zip(got) {
            if bytes.len() as u64 != wide.end - wide.start {
                return Err(damaged(
                    path,
                    format!("it is shorter than its recorded {} bytes", e.size),
                ));
            }
            if let Some(sums) = &e.crc32 {
                check(path, &bytes, wide.start, e.size, sums)?;
            }
            let from = (range.start - wide.start) as usize;
            out.push(bytes.slice(from..from + (range.end - range.start) as usize));
        }
        Ok(out)
    }
}

fn check_size(path: &Path, e: &Expected, meta: &ObjectMeta) -> Result<()> {
    if meta.size != e.size {
        return Err(damaged(
            path,
            format!("it is {} bytes where {} were recorded", meta.size, e.size),
        ));
    }
    Ok(())
}

fn check(path: &Path, bytes: &[u8], start: u64, size: u64, sums: &str) -> Result<()> {
    check_blocks(bytes, start, size, sums).map_err(|m| {
        damaged(
            path,
            format!(
                "block {} (from byte {}) has CRC-32 {} where {} was recorded",
                m.block,
                m.block * CRC_BLOCK,
                m.found,
                m.expected
            ),
        )
    })
}

#[async_trait]
impl ObjectStore for CheckedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let Some(e) = self.expected(location) else {
            return self.inner.get_opts(location, options).await;
        };
        if options.head {
            let r = self.inner.get_opts(location, options).await?;
            check_size(location, &e, &r.meta)?;
            return Ok(r);
        }
        let range = match &options.range {
            None => 0..e.size,
            Some(GetRange::Bounded(r)) => r.clone(),
            Some(GetRange::Offset(o)) => *o..e.size,
            Some(GetRange::Suffix(n)) => e.size.saturating_sub(*n)..e.size,
        };
        if range.end > e.size || range.start > range.end {
            return Err(damaged(
                location,
                format!("a read of bytes {range:?} of a file recorded as {} bytes", e.size),
            ));
        }
        let wide = match &e.crc32 {
            Some(_) => widen(&range, e.size),
            None => range.clone(),
        };
        let mut inner = options;
        inner.range = Some(GetRange::Bounded(wide.clone()));
        let got = match self.inner.get_opts(location, inner).await {
            Ok(got) => got,
            Err(err) => return Err(self.explain(location, &e, err).await),
        };
        let meta = got.meta.clone();
        let attributes = got.attributes.clone();
        check_size(location, &e, &meta)?;
        let bytes = got.bytes().await?;
        if bytes.len() as u64 != wide.end - wide.start {
            return Err(damaged(
                location,
                format!("it is shorter than its recorded {} bytes", e.size),
            ));
        }
        if let Some(sums) = &e.crc32 {
            check(location, &bytes, wide.start, e.size, sums)?;
        }
        let from = (range.start - wide.start) as usize;
        let bytes = bytes.slice(from..from + (range.end - range.start) as usize);
        let stream = futures::stream::once(async move { Ok(bytes) }).boxed();
        Ok(GetResult { payload: GetResultPayload::Stream(stream), meta, range, attributes })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let Some(e) = self.expected(location) else {
            return self.inner.get_ranges(location, ranges).await;
        };
        self.checked_ranges(location, &e, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn sums_do_not_depend_on_how_the_bytes_are_fed() {
        let bytes = data(3 * CRC_BLOCK as usize + 1234);
        let whole = block_sums(&bytes);
        assert_eq!(whole.len(), 4 * 8);
        for piece in [1usize, 1000, CRC_BLOCK as usize - 1, CRC_BLOCK as usize, 700_000] {
            let mut b = BlockCrc::default();
            for c in bytes.chunks(piece) {
                b.update(c);
            }
            assert_eq!(b.finish(), whole, "fed in pieces of {piece}");
        }
        assert_eq!(block_sums(&[]), "");
        assert_eq!(block_sums(&bytes[..CRC_BLOCK as usize]).len(), 8);
    }

    #[test]
    fn every_flipped_bit_of_a_read_is_found() {
        let size = 2 * CRC_BLOCK as usize + 999;
        let bytes = data(size);
        let sums = block_sums(&bytes);
        let range = (CRC_BLOCK + 5)..(size as u64 - 3);
        let wide = widen(&range, size as u64);
        assert_eq!(wide, CRC_BLOCK..size as u64);
        let part = &bytes[wide.start as usize..wide.end as usize];
        assert_eq!(check_blocks(part, wide.start, size as u64, &sums), Ok(()));
        for at in [0usize, 1, CRC_BLOCK as usize - 1, CRC_BLOCK as usize, part.len() - 1] {
            let mut bad = part.to_vec();
            bad[at] ^= 0x10;
            let m = check_blocks(&bad, wide.start, size as u64, &sums).unwrap_err();
            assert_eq!(m.block, 1 + at as u64 / CRC_BLOCK, "bit at {at}");
        }
    }

    #[test]
    fn ranges_widen_to_whole_blocks_within_the_file() {
        let b = CRC_BLOCK;
        assert_eq!(widen(&(0..1), 10 * b), 0..b);
        assert_eq!(widen(&(b..b + 1), 10 * b), b..2 * b);
        assert_eq!(widen(&(b - 1..b + 1), 10 * b), 0..2 * b);
        assert_eq!(widen(&(5 * b + 3..5 * b + 9), 5 * b + 9), 5 * b..5 * b + 9);
        assert_eq!(widen(&(0..0), 0), 0..0);
    }

    #[tokio::test]
    async fn a_damaged_file_is_refused_naming_it() {
        use object_store::memory::InMemory;
        use object_store::ObjectStoreExt;
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let bytes = data(CRC_BLOCK as usize + 100);
        let path = Path::from("d/run_id=r/part-00000.parquet");
        inner.put(&path, Bytes::from(bytes.clone()).into()).await.unwrap();
        let entry = FileEntry {
            path: path.to_string(),
            size: bytes.len() as u64,
            rows: 1,
            sha256: String::new(),
            crc32: Some(block_sums(&bytes)),
        };
        let store = CheckedStore::new(inner.clone());
        store.expect([&entry]);
        let got = store.get_range(&path, 10..20).await.unwrap();
        assert_eq!(&got[..], &bytes[10..20]);
        let all = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&all[..], &bytes[..]);
        // A flipped bit in the first block.
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        inner.put(&path, Bytes::from(bad).into()).await.unwrap();
        let err = store.get_range(&path, 10..20).await.unwrap_err().to_string();
        assert!(
            err.contains("d/run_id=r/part-00000.parquet is damaged") && err.contains("block 0"),
            "{err}"
        );
        // The second block is still good.
        assert!(store.get_range(&path, CRC_BLOCK + 1..CRC_BLOCK + 5).await.is_ok());
        // A truncated file.
        inner.put(&path, Bytes::from(bytes[..50].to_vec()).into()).await.unwrap();
        let err = store.get(&path).await.unwrap_err().to_string();
        assert!(err.contains("50 bytes where"), "{err}");
    }
}
