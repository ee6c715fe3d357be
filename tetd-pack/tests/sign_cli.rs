//! `tetd-pack keygen / sign / verify / inspect` end to end, through the real
//! binary: key files (mode, overwrite, never printed), signing in place and
//! to another file, re-signing, every verification failure with its exit
//! status and message, JSON output.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tetd::abi::{self, Mode};
use tetd::image::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tetd-pack"))
}

/// Everything a command printed (stdout and stderr), plus its status.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    raw: Vec<u8>,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn run(log: &mut Vec<Run>, args: &[&dyn AsRef<std::ffi::OsStr>]) -> usize {
    let mut c = bin();
    for a in args {
        c.arg(a);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().expect("run tetd-pack");
    let mut raw = stdout.clone();
    raw.extend_from_slice(&stderr);
    log.push(Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        raw,
    });
    log.len() - 1
}

/// Run and return the exit status.
fn status(log: &mut Vec<Run>, args: &[&dyn AsRef<std::ffi::OsStr>]) -> i32 {
    let r = run(log, args);
    log[r].code
}

fn sample_image() -> Vec<u8> {
    let mut text = vec![0x90u8; 200];
    text.push(0xc3);
    let mut data = vec![0u8; 32];
    data[..8].copy_from_slice(&0x10u64.to_le_bytes());
    ImageBuilder {
        manifest: ManifestHeader {
            agent_count: 0,
            flags: 0,
            stack_size: 16384,
            heap_size: 0,
            max_input: 4096,
            max_output: 4096,
            mode: Mode::Exclusive,
            required_services: 0,
            package: encode_padded("cli-sample").unwrap(),
            version: encode_padded("0.3.0").unwrap(),
        },
        agents: vec![AgentRecord {
            id: 7,
            mode: Mode::Exclusive,
            flags: 0,
            max_input: 4096,
            max_output: 4096,
            entry: 0,
            name: abi::encode_name("echo"),
        }],
        segments: vec![
            SegmentSpec {
                vaddr: 0,
                mem_size: 4096,
                perms: PERM_R | PERM_X,
                data: text,
            },
            SegmentSpec {
                vaddr: 4096,
                mem_size: 4096,
                perms: PERM_R | PERM_W,
                data,
            },
        ],
        relocations: vec![4096],
        load_size: 8192,
    }
    .build()
    .unwrap()
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.p(name);
        fs::write(&p, bytes).unwrap();
        p
    }
}

/// The seed inside a ring PKCS#8 v2 Ed25519 document (fixed layout:
/// `30 51 02 01 01 30 05 06 03 2b 65 70 04 22 04 20 <seed> 81 21 00 <public>`).
fn seed_of(pk8: &[u8]) -> [u8; 32] {
    assert_eq!(pk8.len(), 83, "PKCS#8 v2 Ed25519 document (ring layout)");
    assert_eq!(
        &pk8[..16],
        &[
            0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20
        ]
    );
    pk8[16..48].try_into().unwrap()
}

fn pub_of(pk8: &[u8]) -> [u8; 32] {
    assert_eq!(&pk8[48..51], &[0x81, 0x21, 0x00]);
    pk8[51..83].try_into().unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_writes_0600_key_and_pub_and_refuses_overwrite() {
    let env = Env::new();
    let mut log = Vec::new();
    let key = env.p("signer.pk8");
    let r = run(&mut log, &[&"keygen", &"-o", &key]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    assert_eq!(mode(&key), 0o600);
    let pk8 = fs::read(&key).unwrap();
    let public = pub_of(&pk8);
    let pubfile = env.p("signer.pub");
    let line = fs::read_to_string(&pubfile).unwrap();
    // The .pub file is a valid one-key allow-list with the right key.
    let list = tetd::verify::AllowList::parse(&line).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list.keys().next().unwrap().public_key, public);
    // The key id is printed.
    let id = hex(&key_id(&public));
    assert!(log[r].stdout.contains(&id), "{}", log[r].stdout);
    // No temporary files are left behind.
    let names: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Refuses to overwrite the key, or the .pub alone.
    let r = run(&mut log, &[&"keygen", &"-o", &key]);
    assert_ne!(log[r].code, 0);
    assert!(
        log[r].stderr.contains("already exists"),
        "{}",
        log[r].stderr
    );
    assert!(log[r].stderr.contains("--force"));
    assert_eq!(fs::read(&key).unwrap(), pk8, "key unchanged");
    let other = env.p("other.pk8");
    fs::write(env.p("other.pub"), "keep me").unwrap();
    let r = run(&mut log, &[&"keygen", &"-o", &other]);
    assert_ne!(log[r].code, 0);
    assert!(!other.exists(), "no half key pair");
    assert_eq!(fs::read_to_string(env.p("other.pub")).unwrap(), "keep me");

    // --force replaces both, still 0600.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let r = run(&mut log, &[&"keygen", &"-o", &key, &"--force"]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    assert_ne!(fs::read(&key).unwrap(), pk8);
    assert_eq!(mode(&key), 0o600);
    assert_ne!(fs::read_to_string(&pubfile).unwrap(), line);

    // A private key path ending in .pub is refused.
    let r = run(&mut log, &[&"keygen", &"-o", &env.p("x.pub")]);
    assert_ne!(log[r].code, 0);

    assert_no_secret(&log, &[fs::read(&key).unwrap(), pk8]);
}

fn b64(data: &[u8], url: bool) -> String {
    let table: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(table[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// No output of any command contains the private key in any usual form:
/// raw bytes, hex (either case), base64 (standard or URL-safe, and the
/// base64 of the seed at each of the three alignments), or a decimal/debug
/// byte list.
fn assert_no_secret(log: &[Run], keys: &[Vec<u8>]) {
    for pk8 in keys {
        let seed = seed_of(pk8);
        let mut needles: Vec<Vec<u8>> = vec![seed[..12].to_vec(), seed[12..24].to_vec()];
        let h = hex(&seed);
        for s in [&h[..24], &h[24..48], &h[40..64]] {
            needles.push(s.as_bytes().to_vec());
            needles.push(s.to_uppercase().into_bytes());
        }
        needles.push(format!("{:?}", &seed[..6]).into_bytes());
        needles.push(format!("{:?}", &seed[20..26]).into_bytes());
        for url in [false, true] {
            for skip in 0..3 {
                // The seed's base64 at each of the three alignments: covers
                // the base64 of the seed alone and of any document holding it.
                let enc = b64(&pk8[16 + skip..48], url);
                needles.push(enc.as_bytes()[4..24].to_vec());
            }
        }
        for (i, r) in log.iter().enumerate() {
            for n in &needles {
                assert!(
                    !r.raw.windows(n.len()).any(|w| w == &n[..]),
                    "command #{i} printed private key material ({:?})",
                    String::from_utf8_lossy(n)
                );
            }
        }
    }
}

#[test]
fn sign_verify_inspect_flow_and_every_failure() {
    let env = Env::new();
    let mut log = Vec::new();
    let key = env.p("release.pk8");
    let other_key = env.p("other.pk8");
    assert_eq!(status(&mut log, &[&"keygen", &"-o", &key]), 0);
    assert_eq!(status(&mut log, &[&"keygen", &"-o", &other_key]), 0);
    let pubf = env.p("release.pub");
    let other_pub = env.p("other.pub");
    let public = pub_of(&fs::read(&key).unwrap());
    let id = hex(&key_id(&public));
    let other_id = hex(&key_id(&pub_of(&fs::read(&other_key).unwrap())));
    let allow = env.write(
        "allow.list",
        format!(
            "# production\n{}",
            fs::read_to_string(&pubf)
                .unwrap()
                .replace("  #", " admin  #")
        )
        .as_bytes(),
    );
    let allow_other = env.write("other.list", &fs::read(&other_pub).unwrap());

    let unsigned = sample_image();
    let img = env.write("echo.tetd", &unsigned);
    fs::set_permissions(&img, fs::Permissions::from_mode(0o640)).unwrap();

    // Unsigned: verify fails with "not signed", exit 1.
    let r = run(&mut log, &[&"verify", &img, &"--allow", &allow]);
    assert_eq!(log[r].code, 1, "{}", log[r].all());
    assert!(log[r].all().contains("not signed"), "{}", log[r].all());
    // ...unless unsigned images are allowed.
    let r = run(
        &mut log,
        &[&"verify", &img, &"--allow", &allow, &"--allow-unsigned"],
    );
    assert_eq!(log[r].code, 0, "{}", log[r].all());

    // Sign to another file: the input stays unsigned.
    let out = env.p("echo.signed.tetd");
    let r = run(&mut log, &[&"sign", &img, &"--key", &key, &"-o", &out]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    assert!(log[r].stdout.contains(&id));
    assert_eq!(fs::read(&img).unwrap(), unsigned);
    let signed = fs::read(&out).unwrap();
    assert_eq!(signed.len(), unsigned.len() + SIG_BLOCK_SIZE);
    assert_eq!(&signed[..unsigned.len()], &unsigned[..], "body unchanged");

    // Sign in place (keeps the file mode).
    let r = run(&mut log, &[&"sign", &img, &"--key", &key]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    assert_eq!(fs::read(&img).unwrap(), signed, "Ed25519 is deterministic");
    assert_eq!(mode(&img), 0o640);

    // Signing through a symlink signs the file it points to.
    let link = env.p("link.tetd");
    let target = env.write("target.tetd", &unsigned);
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_eq!(status(&mut log, &[&"sign", &link, &"--key", &key]), 0);
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&target).unwrap(), signed);

    // Verifies: allow-list (admin), pubkey file, literal key, no policy.
    let r = run(&mut log, &[&"verify", &img, &"--allow", &allow]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    assert!(
        log[r].stdout.contains(&id) && log[r].stdout.contains("admin"),
        "{}",
        log[r].stdout
    );
    let r = run(&mut log, &[&"verify", &img, &"--pubkey", &pubf]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    let literal = format!("ed25519:{}", hex(&public));
    let r = run(&mut log, &[&"verify", &img, &"--pubkey", &literal]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    let r = run(&mut log, &[&"verify", &img]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    assert!(
        log[r]
            .stdout
            .contains("signature valid (signer not checked)"),
        "{}",
        log[r].stdout
    );

    // Not-allowed and wrong keys.
    let r = run(&mut log, &[&"verify", &img, &"--allow", &allow_other]);
    assert_eq!(log[r].code, 1);
    assert!(
        log[r].stderr.contains("signer not allowed") && log[r].stderr.contains(&id),
        "{}",
        log[r].stderr
    );
    let r = run(&mut log, &[&"verify", &img, &"--pubkey", &other_pub]);
    assert_eq!(log[r].code, 1);
    assert!(
        log[r].stderr.contains("signer not allowed"),
        "{}",
        log[r].stderr
    );

    // JSON.
    let r = run(
        &mut log,
        &[&"verify", &img, &"--allow", &allow_other, &"--json"],
    );
    assert_eq!(log[r].code, 1);
    let v: serde_json::Value = serde_json::from_str(&log[r].stdout).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(v["error"]["code"], "SignerNotAllowed");
    assert_eq!(v["error"]["number"], 111);
    assert_eq!(v["signer"]["key_id"], id);
    assert_eq!(v["policy"], "allow-list");
    let r = run(&mut log, &[&"verify", &img, &"--allow", &allow, &"--json"]);
    assert_eq!(log[r].code, 0);
    let v: serde_json::Value = serde_json::from_str(&log[r].stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["signer"]["admin"], true);
    assert_eq!(v["signer"]["trusted"], true);
    assert_eq!(v["signer"]["public_key"], hex(&public));
    assert_eq!(
        v["measurement"],
        hex(Image::parse(&signed).unwrap().measurement())
    );

    // Inspect: key id and status.
    let r = run(&mut log, &[&"inspect", &img]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    assert!(log[r].stdout.contains(&id));
    assert!(
        log[r]
            .stdout
            .contains("signature valid (signer not checked)"),
        "{}",
        log[r].stdout
    );
    let r = run(&mut log, &[&"inspect", &img, &"--allow", &allow]);
    assert!(
        log[r].stdout.contains("signer in allow-list") && log[r].stdout.contains("admin key"),
        "{}",
        log[r].stdout
    );
    let r = run(&mut log, &[&"inspect", &img, &"--allow", &allow_other]);
    assert!(
        log[r].stdout.contains("NOT in allow-list"),
        "{}",
        log[r].stdout
    );

    // Each failure says exactly what failed (exit 1).
    let cases: Vec<(&str, Vec<u8>, &str)> = {
        let mut v = Vec::new();
        let mut b = signed.clone();
        b[0] = b'X';
        v.push(("magic", b, "bad magic"));
        v.push((
            "truncated",
            signed[..unsigned.len() - 100].to_vec(),
            "truncated",
        ));
        let mut b = signed.clone();
        b[unsigned.len() - 5] ^= 1; // segment data
        v.push(("data", b, "measurement mismatch"));
        let mut b = signed.clone();
        b[unsigned.len() + 112] ^= 1; // key id
        v.push(("key id", b, "malformed signature block"));
        let mut b = signed.clone();
        b[unsigned.len() + 60] ^= 1; // signature bytes
        v.push(("signature", b, "signature invalid"));
        v.push((
            "trailing",
            [&signed[..], b"x"].concat(),
            "malformed signature block",
        ));
        v
    };
    for (what, bytes, msg) in cases {
        let f = env.write(&format!("bad-{}.tetd", what.replace(' ', "-")), &bytes);
        let r = run(&mut log, &[&"verify", &f, &"--allow", &allow]);
        assert_eq!(log[r].code, 1, "{what}: {}", log[r].all());
        assert!(log[r].stderr.contains(msg), "{what}: {}", log[r].stderr);
        let r = run(&mut log, &[&"verify", &f, &"--allow", &allow, &"--json"]);
        assert_eq!(log[r].code, 1);
        let v: serde_json::Value = serde_json::from_str(&log[r].stdout).unwrap();
        assert_eq!(v["verified"], false, "{what}");
    }

    // Re-signing with another key replaces the block.
    let r = run(&mut log, &[&"sign", &img, &"--key", &other_key]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    assert!(
        log[r].stdout.contains(&other_id) && log[r].stdout.contains("replaced"),
        "{}",
        log[r].stdout
    );
    assert_eq!(fs::read(&img).unwrap().len(), signed.len());
    assert_eq!(status(&mut log, &[&"verify", &img, &"--allow", &allow]), 1);
    assert_eq!(
        status(&mut log, &[&"verify", &img, &"--allow", &allow_other]),
        0
    );

    // Signing a malformed image writes nothing.
    let junk = env.write("junk.tetd", b"not an image at all");
    let r = run(&mut log, &[&"sign", &junk, &"--key", &key]);
    assert_ne!(log[r].code, 0);
    assert!(log[r].stderr.contains("bad magic"), "{}", log[r].stderr);
    assert_eq!(fs::read(&junk).unwrap(), b"not an image at all");

    // Misuse of key files: errors name the file, never print its content.
    let r = run(&mut log, &[&"verify", &img, &"--allow", &key]);
    assert_eq!(log[r].code, 1, "{}", log[r].all());
    let r = run(&mut log, &[&"verify", &img, &"--pubkey", &key]);
    assert_eq!(log[r].code, 1, "{}", log[r].all());
    let r = run(&mut log, &[&"verify", &key]);
    assert_eq!(log[r].code, 1, "{}", log[r].all());
    assert!(log[r].stderr.contains("bad magic"));
    let r = run(&mut log, &[&"inspect", &key]);
    assert_ne!(log[r].code, 0);
    let r = run(&mut log, &[&"sign", &key, &"--key", &key]);
    assert_ne!(log[r].code, 0);
    let r = run(&mut log, &[&"sign", &img, &"--key", &pubf]);
    assert_ne!(log[r].code, 0);
    assert!(
        log[r].stderr.contains("public key file"),
        "{}",
        log[r].stderr
    );
    let r = run(
        &mut log,
        &[&"verify", &img, &"--allow", &allow, &"--pubkey", &pubf],
    );
    assert_ne!(log[r].code, 0);

    // A world-readable key works but is warned about.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let r = run(&mut log, &[&"sign", &img, &"--key", &key]);
    assert_eq!(log[r].code, 0);
    assert!(log[r].stderr.contains("chmod 600"), "{}", log[r].stderr);

    assert_no_secret(
        &log,
        &[fs::read(&key).unwrap(), fs::read(&other_key).unwrap()],
    );
}

#[test]
fn keys_from_openssl_style_pkcs8_v1_are_accepted() {
    // PKCS#8 v1 (no public key) as `openssl genpkey -algorithm ed25519
    // -outform DER` writes it: RFC 8032 test 1's seed.
    let seed: [u8; 32] = (0..32)
        .map(|i| {
            u8::from_str_radix(
                &"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
                    [2 * i..2 * i + 2],
                16,
            )
            .unwrap()
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    let env = Env::new();
    let key = env.write("v1.der", &der);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let img = env.write("a.tetd", &sample_image());
    let mut log = Vec::new();
    let r = run(&mut log, &[&"sign", &img, &"--key", &key]);
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    let rfc_pk = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let r = run(
        &mut log,
        &[&"verify", &img, &"--pubkey", &format!("ed25519:{rfc_pk}")],
    );
    assert_eq!(log[r].code, 0, "{}", log[r].all());
    for r in &log {
        assert!(!r.all().contains("9d61b19deffd5a60"), "seed printed");
    }
}

/// The leak check itself catches a leak (negative control).
#[test]
#[should_panic(expected = "printed private key material")]
fn leak_check_detects_a_printed_key() {
    let mut pk8 = vec![
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pk8.extend((0..32).map(|i| i * 7 + 3));
    pk8.extend_from_slice(&[0x81, 0x21, 0x00]);
    pk8.extend([9u8; 32]);
    let leaked = format!("key: {}\n", b64(&pk8, false));
    let run = Run {
        code: 0,
        stdout: leaked.clone(),
        stderr: String::new(),
        raw: leaked.into_bytes(),
    };
    assert_no_secret(&[run], &[pk8]);
}
