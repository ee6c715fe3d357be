//! Expansion tests: agents defined with `#[tetd::agent]` in this host test
//! crate; their descriptors (normal statics, reached through the exported
//! symbols `tetd-pack` relies on) and trampolines are checked at run time.

use core::ffi::c_void;

use tetd::abi::{
    self, AgentDescriptor, CallFrame, Error, Mode, Services, ABI_VERSION, AGENT_FLAG_ADMIN,
    AGENT_FLAG_ENCRYPTED, DESCRIPTOR_MAGIC, MODE_FROM_MANIFEST,
};

#[tetd::agent(id = 1)]
fn echo(ctx: &mut tetd::Call) -> tetd::Result<()> {
    let input = ctx.input().to_vec();
    ctx.output(&input)
}

#[tetd::agent(
    id = 4000000000,
    name = "everything",
    mode = collaborative,
    admin,
    encrypted,
    max_input = 100,
    max_output = 200,
)]
pub fn all_options(ctx: &mut tetd::Call<'_>) -> tetd::Result<()> {
    if ctx.input().is_empty() {
        return Err(Error::InvalidInput);
    }
    ctx.output(b"ok")
}

#[tetd::agent(id = 3, mode = "exclusive", name = "abcdefghijklmnopqrstuvwxyz012345")]
fn thirty_two_byte_name(_ctx: &mut tetd::Call) -> tetd::Result<()> {
    Ok(())
}

mod inner {
    use tetd::{Call, Result};

    // Imported names and a raw identifier.
    #[tetd::agent(id = 0x10)]
    pub(crate) fn r#loop(ctx: &mut Call) -> Result<()> {
        ctx.output(&[ctx.agent_id() as u8])
    }
}

// The symbols `tetd-pack` finds descriptors and entries by.
extern "C" {
    #[link_name = "__tetd_agent_1_echo"]
    static ECHO: AgentDescriptor;
    #[link_name = "__tetd_agent_4000000000_all_options"]
    static ALL: AgentDescriptor;
    #[link_name = "__tetd_agent_3_thirty_two_byte_name"]
    static LONG: AgentDescriptor;
    #[link_name = "__tetd_agent_16_loop"]
    static LOOP: AgentDescriptor;
    #[link_name = "__tetd_entry_1_echo"]
    fn echo_entry(frame: *mut CallFrame) -> u32;
}

fn desc(d: &'static AgentDescriptor) -> AgentDescriptor {
    *d
}

#[test]
fn macro_constants_match_abi() {
    // tetd-macros hard-codes the name limit (it cannot depend on tetd-sdk).
    assert_eq!(abi::AGENT_NAME_LEN, 32);
    assert_eq!(abi::DESCRIPTOR_SECTION, ".tetd.agents");
}

#[test]
fn default_options() {
    // SAFETY: the macro defines this symbol with type AgentDescriptor.
    let d = desc(unsafe { &ECHO });
    assert_eq!(d.magic, DESCRIPTOR_MAGIC);
    assert_eq!(d.abi_version, ABI_VERSION);
    assert_eq!(d.id, 1);
    assert_eq!(d.mode, MODE_FROM_MANIFEST);
    assert_eq!(d.flags, 0);
    assert_eq!(d.max_input, 0);
    assert_eq!(d.max_output, 0);
    assert_eq!(d.reserved, 0);
    assert_eq!(abi::decode_name(&d.name), Some("echo"));
    assert_eq!(
        d.entry as *const () as usize,
        echo_entry as *const () as usize
    );
}

#[test]
fn all_options_set() {
    // SAFETY: as above.
    let d = desc(unsafe { &ALL });
    assert_eq!(d.id, 4_000_000_000);
    assert_eq!(d.mode, Mode::Collaborative as u32);
    assert_eq!(d.flags, AGENT_FLAG_ADMIN | AGENT_FLAG_ENCRYPTED);
    assert_eq!(d.max_input, 100);
    assert_eq!(d.max_output, 200);
    assert_eq!(abi::decode_name(&d.name), Some("everything"));
}

#[test]
fn string_mode_and_32_byte_name() {
    // SAFETY: as above.
    let d = desc(unsafe { &LONG });
    assert_eq!(d.mode, Mode::Exclusive as u32);
    assert_eq!(
        abi::decode_name(&d.name),
        Some("abcdefghijklmnopqrstuvwxyz012345")
    );
}

#[test]
fn raw_identifier_and_hex_id() {
    // SAFETY: as above.
    let d = desc(unsafe { &LOOP });
    assert_eq!(d.id, 16);
    assert_eq!(abi::decode_name(&d.name), Some("loop"));
    let (status, out) = call(&d, 16, b"");
    assert_eq!(status, 0);
    assert_eq!(out, [16]);
}

#[test]
fn descriptors_live_in_the_agent_section() {
    // Read this test executable's own `.tetd.agents` section, as tetd-pack
    // reads an agent's: exactly our six descriptors, in 72-byte records.
    use object::{Object, ObjectSection};
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let file = object::File::parse(&*exe).unwrap();
    let sec = file
        .section_by_name(abi::DESCRIPTOR_SECTION)
        .expect("no .tetd.agents section");
    let data = sec.data().unwrap();
    assert_eq!(data.len() % abi::DESCRIPTOR_SIZE, 0);
    let mut ids: Vec<u32> = data
        .chunks(abi::DESCRIPTOR_SIZE)
        .map(|d| {
            assert_eq!(
                u32::from_le_bytes(d[0..4].try_into().unwrap()),
                DESCRIPTOR_MAGIC
            );
            u32::from_le_bytes(d[8..12].try_into().unwrap())
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 3, 5, 7, 16, 4_000_000_000]);
}

// --- calling trampolines through the descriptor, as a runtime does --------

unsafe extern "C" fn log(_: *mut c_void, _: *const u8, _: usize) {}
unsafe extern "C" fn random(_: *mut c_void, _: *mut u8, _: usize) -> u32 {
    Error::Unsupported.code()
}
unsafe extern "C" fn time_ns(_: *mut c_void) -> u64 {
    0
}
unsafe extern "C" fn abort(_: *mut c_void, code: u32) -> ! {
    panic!("abort {code}")
}
unsafe extern "C" fn register_entry(
    _: *mut c_void,
    _: u32,
    _: *const u8,
    _: usize,
    _: abi::AgentEntry,
) -> u32 {
    Error::Unsupported.code()
}
unsafe extern "C" fn admin(
    _: *mut c_void,
    _: u32,
    _: u64,
    _: *mut u8,
    _: usize,
    _: *mut usize,
) -> u32 {
    Error::Denied.code()
}

fn call(d: &AgentDescriptor, id: u32, input: &[u8]) -> (u32, Vec<u8>) {
    let services = Services {
        abi_version: ABI_VERSION,
        size: core::mem::size_of::<Services>() as u32,
        ctx: core::ptr::null_mut(),
        log,
        random,
        time_ns,
        abort,
        register_entry,
        admin,
    };
    let mut out = vec![0u8; 64];
    let mut frame = CallFrame {
        abi_version: ABI_VERSION,
        agent_id: id,
        input: input.as_ptr(),
        input_len: input.len() as u64,
        output: out.as_mut_ptr(),
        output_cap: out.len() as u64,
        output_len: 0,
        services: &services,
        heap: core::ptr::null_mut(),
        heap_len: 0,
        flags: 0,
    };
    // SAFETY: the frame satisfies the CallFrame contract: buffers valid for
    // their lengths, services valid for the call.
    let status = unsafe { (d.entry)(&mut frame) };
    out.truncate(frame.output_len as usize);
    (status, out)
}

#[test]
fn trampoline_dispatches_to_the_handler() {
    // SAFETY: as above.
    let d = desc(unsafe { &ECHO });
    let (status, out) = call(&d, 1, b"hello agent");
    assert_eq!(status, 0);
    assert_eq!(out, b"hello agent");
}

#[tetd::agent(id = 7, name = "fails")]
fn fails_on_empty(ctx: &mut tetd::Call) -> tetd::Result<()> {
    if ctx.input().is_empty() {
        return Err(Error::InvalidInput);
    }
    ctx.output(b"ok")
}

#[test]
fn handler_errors_become_status_codes() {
    extern "C" {
        #[link_name = "__tetd_agent_7_fails_on_empty"]
        static FAILS: AgentDescriptor;
    }
    // SAFETY: as above.
    let d = desc(unsafe { &FAILS });
    let (status, out) = call(&d, d.id, b"");
    assert_eq!(status, Error::InvalidInput.code());
    assert!(out.is_empty());
    let (status, out) = call(&d, d.id, b"x");
    assert_eq!(status, 0);
    assert_eq!(out, b"ok");
}

#[test]
fn encrypted_trampoline_runs_the_session_wrapper() {
    // SAFETY: as above.
    let d = desc(unsafe { &ALL });
    // Plaintext never reaches the handler of an encrypted agent (the
    // session protocol itself is tested in tetd-sdk, tetd-kvm, tetd-pack).
    for input in [
        &b""[..],
        b"x",
        b"\x03\x01\x00\x00plaintext that is not DATA",
    ] {
        let (status, out) = call(&d, d.id, input);
        assert_eq!(status, Error::Crypto.code(), "{input:?}");
        assert!(out.is_empty());
    }
}

#[test]
fn null_frame_is_rejected() {
    // SAFETY: a null frame is part of the entry contract (rejected).
    let status = unsafe { echo_entry(core::ptr::null_mut()) };
    assert_eq!(status, Error::BadRequest.code());
}

// Lifetime parameters are not generics that need a concrete instance: accepted.
#[tetd::agent(id = 5, name = "lifetimes")]
fn with_lifetime<'a>(ctx: &mut tetd::Call<'a>) -> tetd::Result<()> {
    ctx.output(b"lt")
}

#[test]
fn lifetime_parameters_are_accepted() {
    extern "C" {
        #[link_name = "__tetd_agent_5_with_lifetime"]
        static LT: AgentDescriptor;
    }
    // SAFETY: as above.
    let d = desc(unsafe { &LT });
    assert_eq!(call(&d, 5, b"").1, b"lt");
}
