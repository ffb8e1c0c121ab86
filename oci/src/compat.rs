//! "Compat" images: ordinary tar layers holding the `.wasm` that the entrypoint names, as
//! crun and WasmEdge run them.
//!
//! Layers are indexed in order (later entries replace earlier ones, whiteouts delete), every
//! path and link target is confined to the image root, and only the one file the entrypoint
//! resolves to is read. Nothing is unpacked to disk.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use flate2::read::GzDecoder;
use oci_client::manifest::OciDescriptor;
use tar::EntryType;

use crate::media::TarCompression;
use crate::{Error, Result};

/// One layer blob, in manifest order.
pub(crate) struct Layer {
    pub(crate) path: PathBuf,
    pub(crate) digest: String,
    pub(crate) compression: TarCompression,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    File {
        layer: usize,
    },
    Dir,
    /// Target, already made absolute within the root.
    Symlink(String),
    /// Target path within the root.
    Hardlink(String),
}

/// Symlink hops before resolution gives up, as Linux's ELOOP limit.
const MAX_LINK_HOPS: usize = 40;
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The most a file read reserves before its data has arrived (the tar crate's own
/// `read_all` reserves at most 128 KiB for the same reason).
const PREALLOC_BYTES: u64 = 1024 * 1024;

/// The most layers an image may have (Docker's own limit is 127).
const MAX_LAYERS: usize = 128;
/// The most an image's layers may come to, as downloaded: a compat image is its `.wasm` and
/// whatever base it was built on, and every layer is downloaded before the `.wasm` is found.
const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;
/// The longest entry name or link target, as Linux's PATH_MAX.
const MAX_PATH_BYTES: usize = 4096;
/// The largest GNU long-name or PAX record read before a member: a name and a few
/// attributes, far less than this.
const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// What an image's indexed paths and link targets may come to: a distro base of tens of
/// thousands of files comes to a few MiB.
const MAX_INDEX_BYTES: usize = 64 << 20;
/// The most tar entries read across an image's layers: a distro base has tens of thousands.
const MAX_ENTRIES: usize = 500_000;
/// The most bytes an image's layers may come to once inflated, across every read of them:
/// a gzip layer of a few MiB can inflate to terabytes, and indexing reads it all.
const MAX_INFLATED_BYTES: u64 = 4 << 30;

/// What reading one image may still inflate, shared by every layer reader of the image,
/// and how many tar entries it may hold.
struct Budget {
    inflated_bytes: u64,
    remaining: AtomicU64,
    exceeded: AtomicBool,
    entries: usize,
}

impl Budget {
    fn new(inflated_bytes: u64, entries: usize) -> Arc<Self> {
        Arc::new(Self {
            inflated_bytes,
            remaining: AtomicU64::new(inflated_bytes),
            exceeded: AtomicBool::new(false),
            entries,
        })
    }

    /// The error for a layer that failed to read: the budget's own if it ran out.
    fn error(&self, reference: &str, layer: &Layer, source: std::io::Error) -> Error {
        if self.exceeded.load(Ordering::Relaxed) {
            Error::CompatLimit {
                reference: reference.to_string(),
                detail: format!(
                    "its layers inflate to more than {} bytes (at layer {})",
                    self.inflated_bytes, layer.digest
                ),
            }
        } else {
            Error::BadLayer {
                reference: reference.to_string(),
                digest: layer.digest.clone(),
                source,
            }
        }
    }
}

/// A layer's bytes as the tar reader sees them, counted against the image's [`Budget`].
struct Budgeted<R> {
    inner: R,
    budget: Arc<Budget>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let remaining = self.budget.remaining.load(Ordering::Relaxed);
        if remaining == 0 {
            // At the limit exactly is fine if the stream ends here.
            let mut probe = [0u8; 1];
            if buf.is_empty() || self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.budget.exceeded.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("inflated past the image's limit"));
        }
        let allowed = usize::try_from(remaining).map_or(buf.len(), |r| buf.len().min(r));
        let read = self.inner.read(&mut buf[..allowed])?;
        // `read` ≤ `allowed` ≤ `remaining`; readers run one after another.
        self.budget
            .remaining
            .store(remaining.saturating_sub(read as u64), Ordering::Relaxed);
        Ok(read)
    }
}

/// Reads the file that `entry` (absolute, or relative to `working_dir`) names in the merged
/// layers. `None` when no such regular file exists.
pub(crate) fn read_entry(
    reference: &str,
    layers: &[Layer],
    entry: &str,
    working_dir: &str,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>> {
    read_entry_within(
        reference,
        layers,
        entry,
        working_dir,
        max_bytes,
        &Budget::new(MAX_INFLATED_BYTES, MAX_ENTRIES),
    )
}

/// Refuses, on its manifest and before any layer is downloaded, an image of more layers
/// than `MAX_LAYERS` or whose layers come to more than `MAX_DOWNLOAD_BYTES` (each download
/// stops at the size its descriptor gives, so the manifest's sum bounds the disk used).
pub(crate) fn check_layers(reference: &str, layers: &[OciDescriptor]) -> Result<()> {
    check_layer_count(reference, layers.len())?;
    let total = layers.iter().try_fold(0u64, |sum, layer| {
        sum.checked_add(u64::try_from(layer.size).ok()?)
    });
    match total {
        Some(total) if total <= MAX_DOWNLOAD_BYTES => Ok(()),
        _ => Err(Error::CompatLimit {
            reference: reference.to_string(),
            detail: format!("its layers come to more than {MAX_DOWNLOAD_BYTES} bytes"),
        }),
    }
}

/// Refuses an image of more layers than `MAX_LAYERS`: checked on its manifest, and again
/// when its layers are read.
fn check_layer_count(reference: &str, layers: usize) -> Result<()> {
    if layers > MAX_LAYERS {
        return Err(Error::CompatLimit {
            reference: reference.to_string(),
            detail: format!("it has {layers} layers, over the {MAX_LAYERS}-layer limit"),
        });
    }
    Ok(())
}

fn read_entry_within(
    reference: &str,
    layers: &[Layer],
    entry: &str,
    working_dir: &str,
    max_bytes: u64,
    budget: &Arc<Budget>,
) -> Result<Option<Vec<u8>>> {
    check_layer_count(reference, layers.len())?;
    let tree = index(reference, layers, budget)?;
    let start = if entry.starts_with('/') {
        entry.to_string()
    } else {
        format!("{}/{entry}", working_dir.trim_end_matches('/'))
    };
    let Some((path, layer)) = resolve(reference, &tree, &start)? else {
        return Ok(None);
    };
    read_file(reference, &layers[layer], &path, max_bytes, budget).map(Some)
}

fn open(
    reference: &str,
    layer: &Layer,
    budget: &Arc<Budget>,
) -> Result<tar::Archive<Box<dyn Read>>> {
    let file = std::fs::File::open(&layer.path).map_err(|source| Error::BadLayer {
        reference: reference.to_string(),
        digest: layer.digest.clone(),
        source,
    })?;
    let inflated: Box<dyn Read> = match layer.compression {
        TarCompression::None => Box::new(std::io::BufReader::new(file)),
        TarCompression::Gzip => Box::new(GzDecoder::new(std::io::BufReader::new(file))),
    };
    Ok(tar::Archive::new(Box::new(Budgeted {
        inner: inflated,
        budget: budget.clone(),
    })))
}

fn index(
    reference: &str,
    layers: &[Layer],
    budget: &Arc<Budget>,
) -> Result<BTreeMap<String, Node>> {
    let mut tree = BTreeMap::new();
    let mut entries = 0usize;
    let mut path_bytes = 0usize;
    for (i, layer) in layers.iter().enumerate() {
        each_member(reference, layer, budget, |member, entry| {
            entries += 1;
            if entries > budget.entries {
                return Err(Error::CompatLimit {
                    reference: reference.to_string(),
                    detail: format!("its layers hold more than {} entries", budget.entries),
                });
            }
            let path = confine(reference, &member.path, Path::new("/"), false)?;
            let name = path.rsplit('/').next().unwrap_or_default();
            let parent = parent_of(&path);
            if name == OPAQUE_WHITEOUT {
                remove_below(&mut tree, parent, false);
                return Ok(());
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                remove_below(&mut tree, &join(parent, hidden), true);
                return Ok(());
            }
            let node = match entry.header().entry_type() {
                EntryType::Regular | EntryType::Continuous => Node::File { layer: i },
                EntryType::Directory => Node::Dir,
                EntryType::Symlink => {
                    Node::Symlink(confine(reference, &member.link, Path::new(parent), true)?)
                }
                EntryType::Link => {
                    Node::Hardlink(confine(reference, &member.link, Path::new("/"), false)?)
                }
                _ => return Ok(()),
            };
            // The index is the image's whole tree in memory: bounded by what its paths
            // come to, not only by how many there are.
            path_bytes = path_bytes
                .saturating_add(path.len())
                .saturating_add(match &node {
                    Node::Symlink(target) | Node::Hardlink(target) => target.len(),
                    Node::File { .. } | Node::Dir => 0,
                });
            if path_bytes > MAX_INDEX_BYTES {
                return Err(Error::CompatLimit {
                    reference: reference.to_string(),
                    detail: format!("its paths come to more than {MAX_INDEX_BYTES} bytes"),
                });
            }
            // A new entry replaces whatever was at that path, and a non-directory hides
            // everything that was below it.
            if node != Node::Dir {
                remove_below(&mut tree, &path, false);
            }
            tree.insert(path, node);
            Ok(())
        })?;
    }
    Ok(tree)
}

/// A tar member's names, with the GNU long-name and PAX records before it applied.
struct Member {
    path: PathBuf,
    /// The link target (empty for a member that is not a link).
    link: PathBuf,
}

/// Calls `visit` with each member of `layer` in order. The tar crate reads a GNU long name
/// or a PAX record whole, however large its header says it is (a few hundred KiB of gzip
/// can claim a name of hundreds of MiB), so members are read raw and those records here,
/// each refused past `MAX_RECORD_BYTES`, and every name past `MAX_PATH_BYTES`. A member
/// whose length is not its header's (GNU sparse, or sized by a PAX record) is refused.
fn each_member(
    reference: &str,
    layer: &Layer,
    budget: &Arc<Budget>,
    mut visit: impl FnMut(&Member, &mut tar::Entry<'_, Box<dyn Read>>) -> Result<()>,
) -> Result<()> {
    let bad = |source| budget.error(reference, layer, source);
    let limit = |detail: String| Error::CompatLimit {
        reference: reference.to_string(),
        detail: format!("layer {}: {detail}", layer.digest),
    };
    let mut archive = open(reference, layer, budget)?;
    let mut records = Records::default();
    for entry in archive.entries().map_err(bad)?.raw(true) {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions() {
            records.keep(&mut entry).map_err(|refusal| match refusal {
                Refusal::Read(source) => bad(source),
                Refusal::Limit(detail) => limit(detail),
            })?;
            continue;
        }
        // Solaris' extended header, which libarchive applies as a PAX record and the tar
        // crate passes over: readers would name the next member differently.
        if kind.as_byte() == b'X' {
            return Err(limit("a Solaris extended header".into()));
        }
        let header_size = entry.header().entry_size().map_err(bad)?;
        let member = records.apply(entry.header(), header_size).map_err(limit)?;
        visit(&member, &mut entry)?;
    }
    Ok(())
}

/// Why a record was not kept.
enum Refusal {
    Read(std::io::Error),
    Limit(String),
}

/// The GNU long-name and PAX records read since the last member, which name (and may size)
/// the next one.
#[derive(Default)]
struct Records {
    gnu_path: Option<Vec<u8>>,
    gnu_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// What a member's PAX record says, read in one pass.
#[derive(Default)]
struct Pax {
    /// The first `path` and `linkpath` values, as the tar crate takes them.
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    /// A `size` other than the header's, or a GNU sparse map.
    sized_elsewhere: bool,
}

impl Pax {
    fn read(records: &[u8], header_size: u64) -> Self {
        let mut pax = Pax::default();
        for record in tar::PaxExtensions::new(records).filter_map(std::result::Result::ok) {
            match record.key_bytes() {
                b"path" if pax.path.is_none() => pax.path = Some(record.value_bytes().to_vec()),
                b"linkpath" if pax.linkpath.is_none() => {
                    pax.linkpath = Some(record.value_bytes().to_vec());
                }
                b"size" => {
                    let size = record.value().ok().and_then(|v| v.parse::<u64>().ok());
                    pax.sized_elsewhere |= size != Some(header_size);
                }
                key if key.starts_with(b"GNU.sparse.") => pax.sized_elsewhere = true,
                _ => {}
            }
        }
        pax
    }
}

impl Records {
    /// Reads one record member into its slot.
    fn keep(&mut self, entry: &mut tar::Entry<'_, Box<dyn Read>>) -> Result<(), Refusal> {
        let size = entry.header().entry_size().map_err(Refusal::Read)?;
        if size > MAX_RECORD_BYTES {
            return Err(Refusal::Limit(format!(
                "a long-name or PAX record of {size} bytes, over the {MAX_RECORD_BYTES}-byte limit"
            )));
        }
        let kind = entry.header().entry_type();
        let mut record = Vec::new();
        entry.read_to_end(&mut record).map_err(Refusal::Read)?;
        let slot = if kind.is_gnu_longname() {
            &mut self.gnu_path
        } else if kind.is_gnu_longlink() {
            &mut self.gnu_link
        } else {
            &mut self.pax
        };
        // Readers differ on a second record of a kind before one member (the tar crate and
        // libarchive refuse it, Go keeps the last): refused.
        if slot.replace(record).is_some() {
            return Err(Refusal::Limit(
                "two records of one kind before one member".into(),
            ));
        }
        Ok(())
    }

    /// The member `header` heads, named as the tar crate names it (a GNU long name, then a
    /// PAX record, then the header), the records used up; refused where readers would read
    /// it differently.
    fn apply(&mut self, header: &tar::Header, header_size: u64) -> Result<Member, String> {
        let pax = self
            .pax
            .take()
            .map(|records| Pax::read(&records, header_size))
            .unwrap_or_default();
        let path = self
            .gnu_path
            .take()
            .map(trim_nul)
            .or(pax.path)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let link = self
            .gnu_link
            .take()
            .map(trim_nul)
            .or(pax.linkpath)
            .or_else(|| header.link_name_bytes().map(|name| name.into_owned()))
            .unwrap_or_default();
        // The tar crate applies neither a PAX `size` nor a GNU sparse map to a raw member,
        // so such a member would be read at another length than another reader gives it:
        // its data read as headers, an image showing wasmlet files no one else sees. No
        // image builder writes either (a PAX size is for members over 8 GiB). Go's reader
        // gives a link, a directory, a device or a FIFO no data whatever its header says;
        // the tar crate skips what the header says.
        let kind = header.entry_type();
        let header_only = matches!(
            kind,
            EntryType::Link
                | EntryType::Symlink
                | EntryType::Char
                | EntryType::Block
                | EntryType::Directory
                | EntryType::Fifo
        );
        if pax.sized_elsewhere || kind.is_gnu_sparse() || (header_only && header_size != 0) {
            return Err(
                "a sparse member, one whose PAX record gives it another size than its header, or a link, directory or device with data"
                    .into(),
            );
        }
        // Go cuts a name at its first NUL, this reader would not: refused.
        if [&path, &link].iter().any(|name| name.contains(&0)) {
            return Err("a name holding a NUL".into());
        }
        if let Some(long) = [&path, &link]
            .into_iter()
            .find(|name| name.len() > MAX_PATH_BYTES)
        {
            return Err(format!(
                "a name of {} bytes, over the {MAX_PATH_BYTES}-byte limit",
                long.len()
            ));
        }
        Ok(Member {
            path: PathBuf::from(std::ffi::OsString::from_vec(path)),
            link: PathBuf::from(std::ffi::OsString::from_vec(link)),
        })
    }
}

/// A GNU long name without the NUL it ends with.
fn trim_nul(mut name: Vec<u8>) -> Vec<u8> {
    if name.last() == Some(&0) {
        name.pop();
    }
    name
}

/// Normalizes `raw` (taken relative to `base`) into an absolute path inside the root, or fails
/// if it climbs out. Absolute entry names and hardlink targets are refused (layer paths are
/// relative by spec); absolute symlink targets (`absolute_ok`) resolve against the root.
fn confine(reference: &str, raw: &Path, base: &Path, absolute_ok: bool) -> Result<String> {
    let escape = |how: &str| Error::PathEscape {
        reference: reference.to_string(),
        path: raw.display().to_string(),
        how: how.to_string(),
    };
    let mut parts: Vec<String> = base
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    for component in raw.components() {
        match component {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(escape("`..` above the root"));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                if !absolute_ok {
                    return Err(escape("absolute path"));
                }
                parts.clear();
            }
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn remove_below(tree: &mut BTreeMap<String, Node>, path: &str, including_self: bool) {
    if including_self {
        tree.remove(path);
    }
    let prefix = if path == "/" {
        "/".to_string()
    } else {
        format!("{path}/")
    };
    let doomed: Vec<String> = tree
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for key in doomed {
        tree.remove(&key);
    }
}

/// Follows symlinks component by component, never leaving the root.
fn resolve(
    reference: &str,
    tree: &BTreeMap<String, Node>,
    start: &str,
) -> Result<Option<(String, usize)>> {
    let mut pending: Vec<String> = split(start);
    pending.reverse();
    let mut current: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                if current.pop().is_none() {
                    return Err(Error::PathEscape {
                        reference: reference.into(),
                        path: start.into(),
                        how: "`..` above the root".into(),
                    });
                }
                continue;
            }
            _ => current.push(part),
        }
        let path = format!("/{}", current.join("/"));
        let target = match tree.get(&path) {
            Some(Node::Symlink(target)) | Some(Node::Hardlink(target)) => target.clone(),
            _ => continue,
        };
        hops += 1;
        if hops > MAX_LINK_HOPS {
            return Ok(None);
        }
        current.clear();
        let mut rest = split(&target);
        rest.reverse();
        pending.extend(rest);
    }
    let path = format!("/{}", current.join("/"));
    Ok(match tree.get(&path) {
        Some(Node::File { layer }) => Some((path, *layer)),
        _ => None,
    })
}

fn split(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn read_file(
    reference: &str,
    layer: &Layer,
    wanted: &str,
    max_bytes: u64,
    budget: &Arc<Budget>,
) -> Result<Vec<u8>> {
    let bad = |source| budget.error(reference, layer, source);
    let mut found = None;
    each_member(reference, layer, budget, |member, entry| {
        if confine(reference, &member.path, Path::new("/"), false)? != wanted
            || !matches!(
                entry.header().entry_type(),
                EntryType::Regular | EntryType::Continuous
            )
        {
            return Ok(());
        }
        let size = entry.header().size().map_err(bad)?;
        if size > max_bytes {
            return Err(Error::LayerTooLarge {
                reference: reference.to_string(),
                digest: format!("{}:{wanted}", layer.digest),
                size,
                limit: max_bytes,
            });
        }
        // The header's size is the layer's claim, not a fact: reserve at most
        // PREALLOC_BYTES and let the buffer grow as data arrives, so a header claiming
        // the whole layer limit over a few bytes of data costs a few bytes, not 512 MiB.
        let mut bytes = Vec::with_capacity(size.min(PREALLOC_BYTES) as usize);
        entry.read_to_end(&mut bytes).map_err(bad)?;
        // tar stops at the claimed size but not short of it: a layer that ends early would
        // otherwise hand back a truncated module.
        if bytes.len() as u64 != size {
            return Err(bad(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{wanted} is cut short: its header says {size} bytes, the layer holds {}",
                    bytes.len()
                ),
            )));
        }
        // The last copy in the layer wins, as it would on disk.
        found = Some(bytes);
        Ok(())
    })?;
    found.ok_or_else(|| {
        bad(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{wanted} vanished between reads"),
        ))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What a test layer holds.
    pub(crate) enum Item<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
    }

    /// Builds an uncompressed tar with raw (unchecked) entry names, so tests can write the
    /// hostile ones that `tar::Builder` would refuse.
    pub(crate) fn tar_bytes(items: &[Item]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            let (name, data): (&str, &[u8]) = match item {
                Item::File(name, data) => {
                    header.set_entry_type(EntryType::Regular);
                    (name, data)
                }
                Item::Dir(name) => {
                    header.set_entry_type(EntryType::Directory);
                    (name, &[])
                }
                Item::Symlink(name, target) => {
                    header.set_entry_type(EntryType::Symlink);
                    header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                    (name, &[])
                }
            };
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn layers(dir: &Path, layers: &[Vec<u8>]) -> Vec<Layer> {
        layers
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let path = dir.join(format!("layer{i}"));
                std::fs::write(&path, bytes).unwrap();
                Layer {
                    path,
                    digest: format!("layer{i}"),
                    compression: TarCompression::None,
                }
            })
            .collect()
    }

    const WASM: &[u8] = b"\0asm\x01\0\0\0";

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_gzip_layer_that_inflates_past_the_budget_is_refused_and_one_within_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        // A megabyte of zeros beside the module squeezes to about a kilobyte.
        let zeros = vec![0u8; 1 << 20];
        let tar = tar_bytes(&[Item::File("filler", &zeros), Item::File("app.wasm", WASM)]);
        let mut l = layers(dir.path(), &[gzip(&tar)]);
        l[0].compression = TarCompression::Gzip;
        let read = |budget: u64| {
            read_entry_within(
                "img",
                &l,
                "/app.wasm",
                "/",
                1 << 20,
                &Budget::new(budget, 10),
            )
        };
        let err = read(256 << 10).unwrap_err();
        assert!(matches!(err, Error::CompatLimit { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("inflate to more than 262144 bytes"),
            "{err}"
        );
        // Indexing and then reading the file both inflate the layer.
        let room = 2 * tar.len() as u64;
        assert_eq!(read(room).unwrap().as_deref(), Some(WASM));
    }

    #[test]
    fn too_many_layers_or_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let many = layers(dir.path(), &vec![tar_bytes(&[]); MAX_LAYERS + 1]);
        let err = read_entry("img", &many, "/app.wasm", "/", 1 << 20).unwrap_err();
        assert!(err.to_string().contains("129 layers"), "{err}");

        let crowded = layers(
            dir.path(),
            &[tar_bytes(&[
                Item::Dir("a"),
                Item::Dir("b"),
                Item::File("app.wasm", WASM),
            ])],
        );
        let within = |entries| {
            read_entry_within(
                "img",
                &crowded,
                "/app.wasm",
                "/",
                1 << 20,
                &Budget::new(1 << 20, entries),
            )
        };
        let err = within(2).unwrap_err();
        assert!(err.to_string().contains("more than 2 entries"), "{err}");
        assert_eq!(within(3).unwrap().as_deref(), Some(WASM));
    }

    #[test]
    fn entrypoint_is_found_through_later_layers_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let l = layers(
            dir.path(),
            &[
                tar_bytes(&[Item::Dir("app"), Item::File("app/old.wasm", b"old")]),
                tar_bytes(&[
                    Item::File("app/old.wasm", WASM),
                    Item::Symlink("entry.wasm", "/app/old.wasm"),
                ]),
            ],
        );
        let bytes = read_entry("img", &l, "/entry.wasm", "/", 1 << 20).unwrap();
        assert_eq!(bytes.as_deref(), Some(WASM));
        let relative = read_entry("img", &l, "old.wasm", "/app", 1 << 20).unwrap();
        assert_eq!(relative.as_deref(), Some(WASM));
    }

    #[test]
    fn whiteouts_delete_files_and_opaque_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let l = layers(
            dir.path(),
            &[
                tar_bytes(&[Item::File("a.wasm", WASM), Item::File("d/b.wasm", WASM)]),
                tar_bytes(&[
                    Item::File(".wh.a.wasm", b""),
                    Item::File("d/.wh..wh..opq", b""),
                ]),
            ],
        );
        assert_eq!(
            read_entry("img", &l, "/a.wasm", "/", 1 << 20).unwrap(),
            None
        );
        assert_eq!(
            read_entry("img", &l, "/d/b.wasm", "/", 1 << 20).unwrap(),
            None
        );
    }

    #[test]
    fn dotdot_entries_absolute_entries_and_escaping_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (items, how) in [
            (vec![Item::File("../evil.wasm", WASM)], ".."),
            (vec![Item::File("/etc/evil.wasm", WASM)], "absolute"),
            (
                vec![Item::Dir("a"), Item::Symlink("a/link", "../../etc/passwd")],
                "..",
            ),
        ] {
            let l = layers(dir.path(), &[tar_bytes(&items)]);
            let err = read_entry("img", &l, "/x.wasm", "/", 1 << 20).unwrap_err();
            assert!(matches!(err, Error::PathEscape { .. }), "{err}");
            assert!(err.to_string().contains(how), "{err}");
        }
    }

    #[test]
    fn absolute_symlink_targets_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let l = layers(
            dir.path(),
            &[tar_bytes(&[
                Item::File("real.wasm", WASM),
                Item::Symlink("link.wasm", "/real.wasm"),
            ])],
        );
        assert_eq!(
            read_entry("img", &l, "/link.wasm", "/", 1 << 20)
                .unwrap()
                .as_deref(),
            Some(WASM)
        );
    }

    #[test]
    fn a_header_claiming_more_than_the_layer_holds_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        // A header claiming 256 MiB (under the 512 MiB limit) over 8 bytes of data.
        // `Builder::append` copies only what the reader gives, so the archive really holds
        // 8 bytes, padding, and the two end blocks.
        let claimed: u64 = 256 << 20;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_path("app.wasm").unwrap();
        header.set_size(claimed);
        header.set_mode(0o755);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, WASM).unwrap();
        let l = layers(dir.path(), &[builder.into_inner().unwrap()]);

        // `read_file` itself, not `read_entry`: `index` walks the whole archive first and
        // stops at its early end today, but the read must not depend on that walk.
        let budget = Budget::new(MAX_INFLATED_BYTES, MAX_ENTRIES);
        let err = read_file("img", &l[0], "/app.wasm", 512 << 20, &budget).unwrap_err();
        assert!(matches!(err, Error::BadLayer { .. }), "{err}");
        let cause = std::error::Error::source(&err).map(|c| c.to_string());
        assert!(
            cause
                .as_deref()
                .is_some_and(|c| c.contains("/app.wasm is cut short") && c.contains("268435456")),
            "{cause:?}"
        );
    }

    #[test]
    fn an_entry_larger_than_the_reservation_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        // Three times the up-front reservation, with a pattern, so a lost or repeated chunk
        // would show.
        let big: Vec<u8> = (0..3 * PREALLOC_BYTES as usize)
            .map(|i| (i % 251) as u8)
            .collect();
        let l = layers(dir.path(), &[tar_bytes(&[Item::File("big.wasm", &big)])]);
        let bytes = read_entry("img", &l, "/big.wasm", "/", 4 * PREALLOC_BYTES).unwrap();
        assert!(bytes.as_deref() == Some(&big[..]), "the bytes differ");
    }

    #[test]
    fn oversized_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![0u8; 2048];
        let l = layers(dir.path(), &[tar_bytes(&[Item::File("big.wasm", &big)])]);
        let err = read_entry("img", &l, "/big.wasm", "/", 1024).unwrap_err();
        assert!(matches!(err, Error::LayerTooLarge { .. }), "{err}");
    }

    /// Appends `data` at `path` as `tar::Builder` writes a long path: in a GNU long-name
    /// record before the member.
    fn append_long_named(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, data).unwrap();
    }

    /// Appends a member named in its header (a symlink's target is "nowhere").
    fn append_member(
        builder: &mut tar::Builder<Vec<u8>>,
        kind: EntryType,
        name: &str,
        data: &[u8],
    ) {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_path(name).unwrap();
        if kind == EntryType::Symlink {
            header.set_link_name("nowhere").unwrap();
        }
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    /// A layer holding only `data` at `path`, named by a GNU long-name record.
    fn long_named(path: &str, data: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        append_long_named(&mut builder, path, data);
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_long_name_record_past_its_limit_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        // 8 MiB of `a/a/…`: the tar crate would read it whole, and confining it would make
        // a String of each of its four million parts.
        let name = "a/".repeat(4 << 20) + "app.wasm";
        let l = layers(dir.path(), &[long_named(&name, WASM)]);

        let err = read_entry("img", &l, &format!("/{name}"), "/", 1 << 20).unwrap_err();

        assert!(matches!(err, Error::CompatLimit { .. }), "{err:?}");
        assert!(
            err.to_string().contains("long-name or PAX record of"),
            "{err}"
        );
    }

    #[test]
    fn a_name_longer_than_path_max_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let name = "d/".repeat(2100) + "app.wasm";
        let l = layers(dir.path(), &[long_named(&name, WASM)]);

        let err = read_entry("img", &l, &format!("/{name}"), "/", 1 << 20).unwrap_err();

        assert!(
            err.to_string()
                .contains("a name of 4208 bytes, over the 4096-byte limit"),
            "{err}"
        );
    }

    #[test]
    fn long_names_links_and_pax_paths_within_the_limits_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let deep = "deep/".repeat(60);
        let long = format!("{deep}app.wasm");
        let mut builder = tar::Builder::new(Vec::new());
        append_long_named(&mut builder, &long, WASM);
        // A symlink whose target needs a GNU long-link record.
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, "entry.wasm", format!("/{long}"))
            .unwrap();
        // A member whose name is in a PAX record, not its header.
        let pax_name = format!("{}other.wasm", "pax/".repeat(40));
        builder
            .append_pax_extensions([("path", pax_name.as_bytes())])
            .unwrap();
        append_member(&mut builder, EntryType::Regular, "placeholder", WASM);
        // A symlink whose target is in a PAX record; the member after it has its own name.
        builder
            .append_pax_extensions([("linkpath", pax_name.as_bytes())])
            .unwrap();
        append_member(&mut builder, EntryType::Symlink, "by-pax.wasm", &[]);
        append_member(&mut builder, EntryType::Regular, "plain.wasm", WASM);
        let tar = builder.into_inner().unwrap();
        let l = layers(dir.path(), &[tar]);

        let read = |entry: &str| read_entry("img", &l, entry, "/", 1 << 20).unwrap();

        assert_eq!(read(&format!("/{long}")).as_deref(), Some(WASM));
        assert_eq!(read("/entry.wasm").as_deref(), Some(WASM));
        assert_eq!(read(&format!("/{pax_name}")).as_deref(), Some(WASM));
        assert_eq!(
            read("/placeholder"),
            None,
            "the PAX path replaces the header's"
        );
        assert_eq!(
            read("/by-pax.wasm").as_deref(),
            Some(WASM),
            "a PAX link target"
        );
        assert_eq!(
            read("/plain.wasm").as_deref(),
            Some(WASM),
            "a PAX record names one member only"
        );
    }

    #[test]
    fn members_that_tar_readers_would_read_differently_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let read = |tar: Vec<u8>| {
            let l = layers(dir.path(), &[tar]);
            read_entry("img", &l, "/app.wasm", "/", 1 << 20)
        };
        let refused = |tar: Vec<u8>| {
            let err = read(tar).unwrap_err();
            assert!(
                err.to_string()
                    .contains("a sparse member, one whose PAX record"),
                "{err}"
            );
        };
        // Another reader takes the hidden member's 1,024 bytes as its data; a raw reader
        // that kept the header's 0 would read them as the next headers.
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("size", &b"1024"[..])])
            .unwrap();
        append_member(&mut builder, EntryType::Regular, "hidden", &[]);
        append_member(&mut builder, EntryType::Regular, "app.wasm", WASM);
        refused(builder.into_inner().unwrap());

        let mut builder = tar::Builder::new(Vec::new());
        append_member(&mut builder, EntryType::GNUSparse, "sparse", &[]);
        append_member(&mut builder, EntryType::Regular, "app.wasm", WASM);
        refused(builder.into_inner().unwrap());

        let mut builder = tar::Builder::new(Vec::new());
        append_member(&mut builder, EntryType::Directory, "dir", &[0; 512]);
        append_member(&mut builder, EntryType::Regular, "app.wasm", WASM);
        refused(builder.into_inner().unwrap());

        // Records that readers apply differently.
        let layer_refused = |tar: Vec<u8>, why: &str| {
            let err = read(tar).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        };
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("path", &b"a.wasm"[..])])
            .unwrap();
        builder
            .append_pax_extensions([("path", &b"b.wasm"[..])])
            .unwrap();
        append_member(&mut builder, EntryType::Regular, "app.wasm", WASM);
        layer_refused(builder.into_inner().unwrap(), "two records of one kind");
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("path", &b"app.wasm\0.txt"[..])])
            .unwrap();
        append_member(&mut builder, EntryType::Regular, "x", WASM);
        layer_refused(builder.into_inner().unwrap(), "a name holding a NUL");
        let mut builder = tar::Builder::new(Vec::new());
        append_member(&mut builder, EntryType::new(b'X'), "solaris", b"path=x\n");
        layer_refused(builder.into_inner().unwrap(), "a Solaris extended header");

        // A PAX size that agrees with the header is no trouble.
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("size", &b"8"[..])])
            .unwrap();
        append_member(&mut builder, EntryType::Regular, "app.wasm", WASM);
        assert_eq!(
            read(builder.into_inner().unwrap()).unwrap().as_deref(),
            Some(WASM)
        );
    }

    #[test]
    fn an_image_whose_layers_come_to_more_than_the_download_limit_is_refused() {
        let layer = |size: i64| OciDescriptor {
            size,
            ..Default::default()
        };
        let third = i64::try_from(MAX_DOWNLOAD_BYTES / 3).unwrap();

        assert!(check_layers("img", &[layer(third), layer(third), layer(third)]).is_ok());
        let err = check_layers("img", &[layer(third), layer(third), layer(third + 2)]).unwrap_err();
        assert!(
            err.to_string()
                .contains("its layers come to more than 1073741824 bytes"),
            "{err}"
        );
        assert!(check_layers("img", &[layer(-1)]).is_err());
        assert!(check_layers("img", &[layer(i64::MAX), layer(i64::MAX)]).is_err());
    }
}
