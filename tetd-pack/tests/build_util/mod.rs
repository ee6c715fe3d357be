//! Shared by the `build_*` integration tests: run the real `tetd-pack`
//! binary, build agent crates into one shared target directory, and a small
//! loader that maps an image and calls an agent in this process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use tetd::abi::{AgentEntry, CallFrame, Services, ABI_VERSION};
use tetd::image::{Image, PERM_W, PERM_X};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One cargo target directory for every agent build of the tests, so the
/// agent-side dependencies (tetd-sdk, sha2, ...) compile once.
pub fn agent_target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("agents")
}

/// A scratch directory for this test binary, emptied when the process first
/// uses it (so runs do not accumulate files): `target/tmp/tetd-pack-tests/<test>`.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let stem = exe.file_stem().unwrap().to_string_lossy().into_owned();
        // `build_examples-0123abcd` -> `build_examples`
        let name = stem.rsplit_once('-').map_or(stem.as_str(), |(n, _)| n);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("tetd-pack-tests")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Result of one `tetd-pack` run.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Panic with the whole output unless the exit status is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit status {} (expected {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "tetd-pack panicked:\n{}",
            self.stderr
        );
        self
    }
}

/// Run `tetd-pack` with `args` in `cwd`.
pub fn tetd_pack_in<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_tetd-pack"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run tetd-pack");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Run `tetd-pack` with `args` in the workspace root.
pub fn tetd_pack<S: AsRef<OsStr>>(args: &[S]) -> Out {
    tetd_pack_in(&root(), args)
}

/// `tetd-pack build <crate_dir> -o <out> --target-dir <shared> [extra]`.
pub fn build(crate_dir: &Path, out: &Path, extra: &[&str]) -> Out {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("build"),
        crate_dir.as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("--target-dir"),
    ];
    let td = agent_target_dir();
    args.push(td.as_os_str());
    for e in extra {
        args.push(OsStr::new(e));
    }
    tetd_pack(&args)
}

/// Build `examples/<name>` once per test process; returns the image path
/// and the `build --json` output.
pub fn example(name: &str) -> (PathBuf, serde_json::Value) {
    static BUILT: OnceLock<Mutex<HashMap<String, (PathBuf, serde_json::Value)>>> = OnceLock::new();
    let map = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = map.get(name) {
        return v.clone();
    }
    let out = scratch().join(format!("{name}.tetd"));
    let o = build(&root().join("examples").join(name), &out, &["--json"]);
    o.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&o.stdout).expect("build --json is JSON");
    map.insert(name.to_string(), (out.clone(), json.clone()));
    (out, json)
}

/// SHA-384 of an image body with the measurement field zeroed, computed
/// here independently of tetd-sdk.
pub fn recompute_measurement(image: &[u8]) -> String {
    use sha2::{Digest, Sha384};
    let body_len = u32::from_le_bytes(image[56..60].try_into().unwrap()) as usize;
    let mut body = image[..body_len].to_vec();
    body[64..112].fill(0);
    Sha384::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// A minimal in-process loader, to check that packed images really run: map
// the load size, copy segments, apply the relocations, set page permissions,
// call the entry through the C ABI with a CallFrame.
// ---------------------------------------------------------------------------

unsafe extern "C" fn svc_log(_: *mut core::ffi::c_void, _: *const u8, _: usize) {}
unsafe extern "C" fn svc_random(_: *mut core::ffi::c_void, _: *mut u8, _: usize) -> u32 {
    tetd::Error::Unsupported.code()
}
unsafe extern "C" fn svc_time(_: *mut core::ffi::c_void) -> u64 {
    0
}
unsafe extern "C" fn svc_abort(_: *mut core::ffi::c_void, code: u32) -> ! {
    panic!("agent aborted with {code}")
}
unsafe extern "C" fn svc_register(
    _: *mut core::ffi::c_void,
    _: u32,
    _: *const u8,
    _: usize,
    _: AgentEntry,
) -> u32 {
    tetd::Error::Unsupported.code()
}
unsafe extern "C" fn svc_admin(
    _: *mut core::ffi::c_void,
    _: u32,
    _: u64,
    _: *mut u8,
    _: usize,
    _: *mut usize,
) -> u32 {
    tetd::Error::Denied.code()
}

/// Load `bytes` and call agent `id` with `input`; returns (status, output).
pub fn call_agent(bytes: &[u8], id: u32, input: &[u8]) -> (u32, Vec<u8>) {
    let img = Image::parse(bytes).expect("image parses");
    let agent = img.agent(id).expect("agent present");
    let size = img.header().load_size as usize;
    // SAFETY: anonymous private mapping, checked for failure below.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let base = base as *mut u8;
    for s in img.segments() {
        let d = img.segment_data(&s);
        // SAFETY: Image::parse checked every segment lies inside load_size;
        // the mapping is load_size bytes.
        unsafe { core::ptr::copy_nonoverlapping(d.as_ptr(), base.add(s.vaddr as usize), d.len()) };
    }
    for r in img.relocations() {
        // SAFETY: Image::parse checked each 8-byte slot lies in a segment.
        unsafe {
            let p = base.add(r as usize) as *mut u64;
            p.write_unaligned(p.read_unaligned() + base as u64);
        }
    }
    for s in img.segments() {
        let mut prot = libc::PROT_READ;
        if s.perms & PERM_W != 0 {
            prot |= libc::PROT_WRITE;
        }
        if s.perms & PERM_X != 0 {
            prot |= libc::PROT_EXEC;
        }
        // SAFETY: page-aligned range inside the mapping.
        let rc = unsafe {
            libc::mprotect(
                base.add(s.vaddr as usize) as *mut core::ffi::c_void,
                s.mem_size as usize,
                prot,
            )
        };
        assert_eq!(rc, 0);
    }
    let services = Services {
        abi_version: ABI_VERSION,
        size: core::mem::size_of::<Services>() as u32,
        ctx: core::ptr::null_mut(),
        log: svc_log,
        random: svc_random,
        time_ns: svc_time,
        abort: svc_abort,
        register_entry: svc_register,
        admin: svc_admin,
    };
    let mut heap = vec![0u8; img.manifest().heap_size as usize];
    let mut out = vec![0u8; agent.max_output as usize];
    let mut frame = CallFrame {
        abi_version: ABI_VERSION,
        agent_id: id,
        input: input.as_ptr(),
        input_len: input.len() as u64,
        output: out.as_mut_ptr(),
        output_cap: out.len() as u64,
        output_len: 0,
        services: &services,
        heap: heap.as_mut_ptr(),
        heap_len: heap.len() as u64,
        flags: 0,
    };
    // SAFETY: the entry offset lies in an executable segment (checked by
    // Image::parse), now mapped executable at base + entry; the frame
    // satisfies the CallFrame contract for the duration of the call.
    let status = unsafe {
        let entry: AgentEntry = core::mem::transmute(base.add(agent.entry as usize));
        entry(&mut frame)
    };
    // SAFETY: unmapping the mapping made above; nothing refers to it now.
    unsafe { libc::munmap(base as *mut core::ffi::c_void, size) };
    out.truncate(frame.output_len as usize);
    (status, out)
}
