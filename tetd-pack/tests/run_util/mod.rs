//! Shared by the `run_*` integration tests: build example agents with the
//! real `tetd-pack build`, run `tetd-pack run`, sign images in the test.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use ed25519_dalek::{Signer, SigningKey};
use tetd::image::{with_signature, Image, SignatureBlock};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A private scratch directory for this test process.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).unwrap();
        tempfile::Builder::new()
            .prefix("tetd-run-test-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
    })
    .path()
}

/// Result of one `tetd-pack` run.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    /// Panic with the whole output unless the exit status is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "exit status {} (expected {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked at") || self.stderr.contains("[agent "),
            "tetd-pack itself panicked:\n{}",
            self.stderr
        );
        self
    }

    pub fn stdout_str(&self) -> &str {
        std::str::from_utf8(&self.stdout).expect("stdout is UTF-8")
    }

    /// `--json` output.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        })
    }

    /// `--hex-output` lines, decoded.
    pub fn hex_lines(&self) -> Vec<Vec<u8>> {
        self.stdout_str().lines().map(unhex).collect()
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Run `tetd-pack` with `args` (and optional standard input).
pub fn tetd_pack_stdin<S: AsRef<OsStr>>(args: &[S], stdin: Option<&[u8]>) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tetd-pack"))
        .args(args)
        .current_dir(root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tetd-pack");
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub fn tetd_pack<S: AsRef<OsStr>>(args: &[S]) -> Out {
    tetd_pack_stdin(args, None)
}

/// `tetd-pack run <args>`.
pub fn run(args: &[&str]) -> Out {
    let mut a = vec!["run"];
    a.extend_from_slice(args);
    tetd_pack(&a)
}

/// Build `examples/<name>` with the real `tetd-pack build` once per test
/// process (agent dependencies compile once, in a shared target directory).
pub fn example(name: &str) -> String {
    static BUILT: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let map = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(name) {
        return p.clone();
    }
    let out = scratch().join(format!("{name}.tetd"));
    let td = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("agents");
    let o = tetd_pack(&[
        OsStr::new("build"),
        root().join("examples").join(name).as_os_str(),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("--target-dir"),
        td.as_os_str(),
    ]);
    o.expect_code(0);
    let p = out.to_str().unwrap().to_string();
    map.insert(name.to_string(), p.clone());
    p
}

/// A deterministic Ed25519 key for tests.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Sign `image` with `key` (signature over the measurement and manifest,
/// as `tetd-pack sign` does), written next to it as `<stem>.<tag>.tetd`.
pub fn sign(image: &str, k: &SigningKey, tag: &str) -> String {
    let bytes = std::fs::read(image).unwrap();
    let img = Image::parse(&bytes).unwrap();
    let msg: Vec<u8> = img.signed_message_parts().concat();
    let sig = k.sign(&msg).to_bytes();
    let block = SignatureBlock::new(k.verifying_key().to_bytes(), sig);
    let signed = with_signature(&bytes, &block).unwrap();
    let out = Path::new(image).with_extension(format!("{tag}.tetd"));
    std::fs::write(&out, signed).unwrap();
    out.to_str().unwrap().to_string()
}

/// An allow-list file trusting `keys` (`admin` attribute where true).
pub fn allow_list(keys: &[(&SigningKey, bool)], name: &str) -> String {
    let mut text = String::from("# test allow-list\n");
    for (k, admin) in keys {
        text.push_str(&format!(
            "ed25519:{}{}\n",
            hex(&k.verifying_key().to_bytes()),
            if *admin { " admin" } else { "" }
        ));
    }
    let p = scratch().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// The measurement of an image file, hex.
pub fn measurement(image: &str) -> String {
    let bytes = std::fs::read(image).unwrap();
    hex(Image::parse(&bytes).unwrap().measurement())
}

/// A live `tetd-pack run IMAGES --script - --hex-output` process: each
/// call is written as a line and its result read back before the next, so
/// a test can feed one call's output into the next call of the same
/// process (agent state, keys, logs are per process).
pub struct Session {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Session {
    pub fn start(images: &[&str], extra: &[&str]) -> Session {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tetd-pack"))
            .arg("run")
            .args(images)
            .args(["--script", "-", "--hex-output"])
            .args(extra)
            .current_dir(root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tetd-pack");
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Session {
            child,
            stdin,
            stdout,
        }
    }

    /// Make one call (a call spec); `Ok(output)` or `Err("ErrorName")`.
    pub fn call(&mut self, spec: &str) -> Result<Vec<u8>, String> {
        use std::io::BufRead;
        let stdin = self.stdin.as_mut().expect("session open");
        writeln!(stdin, "{spec}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "tetd-pack ended early");
        let line = line.trim_end();
        match line.strip_prefix("! ") {
            Some(err) => Err(err.split_whitespace().next().unwrap().to_string()),
            None => Ok(unhex(line)),
        }
    }

    /// Call agent `id` with `input` (binary-safe).
    pub fn call_bytes(&mut self, id: u32, input: &[u8]) -> Result<Vec<u8>, String> {
        self.call(&format!("{id}:hex:{}", hex(input)))
    }

    /// Close standard input and wait; returns (exit status, stderr).
    pub fn finish(mut self) -> (i32, String) {
        use std::io::Read;
        drop(self.stdin.take());
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let st = self.child.wait().unwrap();
        (st.code().unwrap_or(-1), err)
    }
}
