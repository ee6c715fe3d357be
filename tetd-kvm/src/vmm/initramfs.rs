//! Initramfs builder: a newc ("070701") cpio writer and the busybox guest
//! image (busybox-static + applet symlinks + the TETD init + extra files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{Result, VmmError};

/// The guest init script (`tetd-kvm/guest/init`).
pub const GUEST_INIT: &str = include_str!("../../guest/init");

/// Where Debian's busybox-static installs busybox.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, Clone)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An in-memory cpio archive; later entries for the same path replace earlier ones.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

/// Normalises a guest path ("/a/b", "a/b") to "a/b"; rejects "..", ".", empty
/// components, NUL and the root itself.
fn guest_path(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches('/');
    let bad = trimmed.is_empty()
        || trimmed.contains('\0')
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(VmmError::Config(format!(
            "invalid guest path {path:?} (need /dir/name without '.', '..' or '//')"
        )));
    }
    Ok(trimmed.to_string())
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Initramfs {
        Initramfs::default()
    }

    fn parents(&mut self, path: &str) {
        let mut acc = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            self.nodes
                .entry(acc.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let p = guest_path(path)?;
        if let Some((existing, Node::File { .. } | Node::Symlink { .. } | Node::CharDev { .. })) =
            self.nodes.iter().find(|(k, _)| {
                p.starts_with(k.as_str()) && p.as_bytes().get(k.len()) == Some(&b'/')
            })
        {
            return Err(VmmError::Config(format!(
                "guest path /{p}: parent /{existing} is not a directory"
            )));
        }
        self.parents(&p);
        self.nodes.insert(p, node);
        Ok(())
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(
            path,
            Node::Dir {
                mode: mode & 0o7777,
            },
        )
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Result<()> {
        self.insert(
            path,
            Node::File {
                mode: mode & 0o7777,
                data: data.into(),
            },
        )
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        if target.is_empty() || target.contains('\0') {
            return Err(VmmError::Config(format!(
                "invalid symlink target {target:?} for {path}"
            )));
        }
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.insert(
            path,
            Node::CharDev {
                mode: mode & 0o7777,
                major,
                minor,
            },
        )
    }

    /// Adds a host file at `guest` (mode 0755 if the host file is executable, else 0644).
    pub fn host_file(&mut self, host: &Path, guest: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(host).map_err(|source| VmmError::Io {
            path: host.to_path_buf(),
            source,
        })?;
        let meta = std::fs::metadata(host).map_err(|source| VmmError::Io {
            path: host.to_path_buf(),
            source,
        })?;
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        self.file(guest, data, mode)
    }

    /// Whether the archive has an entry at `path`.
    pub fn contains(&self, path: &str) -> bool {
        guest_path(path)
            .map(|p| self.nodes.contains_key(&p))
            .unwrap_or(false)
    }

    /// Serialises the archive (newc, trailer included).
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, node)) in self.nodes.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir { mode } => (S_IFDIR | mode, &[], (0, 0)),
                Node::File { mode, data } => (S_IFREG | mode, data, (0, 0)),
                Node::Symlink { target } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Node::CharDev { mode, major, minor } => (S_IFCHR | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(node, Node::Dir { .. }) {
                2
            } else {
                1
            };
            write_entry(&mut out, ino as u32 + 1, mode, nlink, name, data, rdev);
        }
        write_entry(&mut out, 0, 0, 1, "TRAILER!!!", &[], (0, 0));
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn write_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
    rdev: (u32, u32),
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: fixed, for reproducible archives
        data.len() as u32,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// What goes into a busybox guest initramfs.
#[derive(Debug, Clone)]
pub struct InitramfsSpec {
    /// Static busybox binary (default [`DEFAULT_BUSYBOX`]).
    pub busybox: PathBuf,
    /// Init script; `None` = the built-in [`GUEST_INIT`].
    pub init: Option<PathBuf>,
    /// Extra host files and their guest paths (e.g. `/tetd/run.sh`, `/lib/modules/tetdg.ko`).
    pub extra: Vec<(PathBuf, String)>,
}

impl Default for InitramfsSpec {
    fn default() -> Self {
        InitramfsSpec {
            busybox: PathBuf::from(DEFAULT_BUSYBOX),
            init: None,
            extra: Vec::new(),
        }
    }
}

/// Parses `HOST:GUEST` (the CLI's `--file` / `--extra-file`).
pub fn parse_host_guest(s: &str) -> Result<(PathBuf, String)> {
    match s.rsplit_once(':') {
        Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => {
            guest_path(guest)?;
            Ok((PathBuf::from(host), guest.to_string()))
        }
        _ => Err(VmmError::Config(format!(
            "{s:?}: expected HOST_PATH:/GUEST/PATH"
        ))),
    }
}

/// Checks that `busybox` is a statically linked busybox and lists its applets
/// (`busybox --list-full`, e.g. `bin/sh`, `usr/bin/env`).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let data = std::fs::read(busybox).map_err(|source| VmmError::Io {
        path: busybox.to_path_buf(),
        source: std::io::Error::new(
            source.kind(),
            format!("{source} (install busybox-static: scripts/setup.sh)"),
        ),
    })?;
    if data.get(..4) != Some(b"\x7fELF") {
        return Err(VmmError::Config(format!(
            "{} is not an ELF binary",
            busybox.display()
        )));
    }
    // A dynamically linked busybox would not run in the initramfs (no libc there).
    if elf_has_interpreter(&data) {
        return Err(VmmError::Config(format!(
            "{} is dynamically linked; the guest needs busybox-static",
            busybox.display()
        )));
    }
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| VmmError::Io {
            path: busybox.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(VmmError::Config(format!(
            "{} --list-full failed",
            busybox.display()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header
/// (i.e. is dynamically linked). Malformed headers count as "no".
fn elf_has_interpreter(data: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..phnum).any(|i| {
        phoff
            .checked_add(i * phentsize)
            .and_then(u32_at)
            .is_some_and(|t| t == PT_INTERP)
    })
}

/// Builds the guest initramfs: busybox at /bin/busybox with a symlink per
/// applet, /init, /dev/console and /dev/null nodes, the standard mount
/// points, and the extra files (which win over applet links of the same path).
pub fn build_busybox_initramfs(spec: &InitramfsSpec) -> Result<Vec<u8>> {
    let mut fs = Initramfs::new();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc", "root",
        "tetd",
    ] {
        fs.dir(d, 0o755)?;
    }
    fs.char_dev("dev/console", 0o600, 5, 1)?;
    fs.char_dev("dev/null", 0o666, 1, 3)?;
    fs.host_file(&spec.busybox, "bin/busybox")?;
    for applet in busybox_applets(&spec.busybox)? {
        if applet != "bin/busybox" && guest_path(&applet).is_ok() {
            fs.symlink(&applet, "/bin/busybox")?;
        }
    }
    match &spec.init {
        Some(path) => {
            let data = std::fs::read(path).map_err(|source| VmmError::Io {
                path: path.clone(),
                source,
            })?;
            fs.file("init", data, 0o755)?;
        }
        None => fs.file("init", GUEST_INIT, 0o755)?,
    }
    for (host, guest) in &spec.extra {
        fs.host_file(host, guest)?;
    }
    Ok(fs.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal newc reader for the tests.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let f = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, namesize) = (f(1), f(6) as usize, f(11) as usize);
            let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).unwrap();
            let mut off = 110 + namesize;
            off += (4 - (total - b.len() + off) % 4) % 4;
            let data = b[off..off + size].to_vec();
            off += size;
            off += (4 - (total - b.len() + off) % 4) % 4;
            b = &b[off..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn newc_roundtrip_with_parents_and_overrides() {
        let mut fs = Initramfs::new();
        fs.file("/tetd/run.sh", "echo hi\n", 0o755).unwrap();
        fs.symlink("/bin/sh", "/bin/busybox").unwrap();
        fs.file("/bin/sh", "real", 0o755).unwrap();
        fs.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        let entries = parse(&fs.finish());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/sh", "dev", "dev/console", "tetd", "tetd/run.sh"]
        );
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!(
            entries[1],
            ("bin/sh".into(), S_IFREG | 0o755, b"real".to_vec())
        );
        assert_eq!(entries[3].1, S_IFCHR | 0o600);
        assert_eq!(entries[5].2, b"echo hi\n");
    }

    #[test]
    fn detects_dynamic_elf() {
        let mut elf = vec![0u8; 0x40 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[0x40] = 1; // PT_LOAD
        assert!(!elf_has_interpreter(&elf));
        elf[0x40 + 56] = 3; // PT_INTERP
        assert!(elf_has_interpreter(&elf));
        elf[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(
            elf_has_interpreter(&elf),
            "truncated tables are scanned safely"
        );
        assert!(!elf_has_interpreter(b"\x7fELF"));
    }

    #[test]
    fn bad_paths_are_rejected() {
        let mut fs = Initramfs::new();
        for p in ["", "/", "/a/../b", "/a//b", "./x"] {
            assert!(fs.file(p, "x", 0o644).is_err(), "{p:?}");
        }
        fs.file("/a", "file", 0o644).unwrap();
        assert!(fs.file("/a/b", "x", 0o644).is_err());
        assert!(parse_host_guest("x.ko:/lib/x.ko").is_ok());
        assert!(parse_host_guest("x.ko").is_err());
        assert!(parse_host_guest("x.ko:rel").is_err());
        assert!(parse_host_guest(":/a").is_err());
    }
}
