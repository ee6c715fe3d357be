//! The loader core end to end on the simulator platform, with
//! hand-assembled agents (see `common`).

mod common;

use common::*;
use tetd::abi::{AdminOp, Error, Mode, AGENT_INFO_SIZE, CALL_FLAG_COLLABORATIVE, CALL_FLAG_FIRST};
use tetd::image::Image;
use tetd_kernel::layout::RegionKind;
use tetd_kernel::sim::{LogTarget, SimPlatform};
use tetd_kernel::{CallOptions, LoadError, Registry};

#[test]
fn echo_round_trip() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let (r, out) = call(&mut reg, ids::ECHO, b"hello");
    assert_eq!(r.status, Ok(()));
    assert!(r.ran);
    assert_eq!(out, b"hello");
    let (r, out) = call(&mut reg, ids::ECHO, b"");
    assert_eq!(r.status, Ok(()));
    assert!(out.is_empty());
    let s = reg.agent(ids::ECHO).unwrap().stats();
    assert_eq!((s.calls, s.failures, s.last_status), (2, 0, Some(0)));
}

#[test]
fn relocations_point_into_the_zone() {
    let mut reg = registry();
    let img_id = reg.load(&image(), &dev_options()).unwrap();
    let base = reg.image(img_id).unwrap().zone().base;
    let (r, out) = call(&mut reg, ids::RELOC, b"");
    assert_eq!(r.status, Ok(()));
    let n = RELOC_STRING.len();
    assert_eq!(&out[..n], RELOC_STRING);
    let p0 = u64::from_le_bytes(out[n..n + 8].try_into().unwrap());
    let p1 = u64::from_le_bytes(out[n + 8..n + 16].try_into().unwrap());
    let ret = u32::from_le_bytes(out[n + 16..n + 20].try_into().unwrap());
    assert_eq!(p0, base + RODATA);
    let (_, _, helper) = assemble();
    assert_eq!(p1, base + helper);
    assert_eq!(ret, 0x2a, "call through the relocated function pointer");
}

#[test]
fn heap_state_persists_across_calls_and_flags() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    for i in 1..=3u64 {
        let (r, out) = call(&mut reg, ids::COUNTER, b"");
        assert_eq!(r.status, Ok(()));
        assert_eq!(out, i.to_le_bytes());
    }
    let (_, out) = call(&mut reg, ids::FLAGS, b"");
    assert_eq!(u64::from_le_bytes(out.try_into().unwrap()), CALL_FLAG_FIRST);
    let (_, out) = call(&mut reg, ids::FLAGS, b"");
    assert_eq!(u64::from_le_bytes(out.try_into().unwrap()), 0);
    let opts = CallOptions {
        mode: Some(Mode::Collaborative),
        timeout_ns: 0,
    };
    let (r, out) = call_with(&mut reg, ids::FLAGS, b"", &opts);
    assert_eq!(r.mode, Mode::Collaborative);
    assert_eq!(
        u64::from_le_bytes(out.try_into().unwrap()),
        CALL_FLAG_COLLABORATIVE
    );
}

#[test]
fn services_random_and_log() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let (r1, a) = call(&mut reg, ids::RANDOM, b"");
    let (r2, b) = call(&mut reg, ids::RANDOM, b"");
    assert_eq!((r1.status, r2.status), (Ok(()), Ok(())));
    assert_eq!(a.len(), 32);
    assert_ne!(a, b, "two random draws are equal");
    assert_ne!(a, [0u8; 32]);
    let (r, _) = call(&mut reg, ids::LOG, b"hello from the agent");
    assert_eq!(r.status, Ok(()));
    let logs = reg.platform().take_logs();
    assert_eq!(logs, vec![(ids::LOG, "hello from the agent".to_string())]);
}

#[test]
fn services_reject_pointers_outside_the_agents_memory() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let (r, _) = call(&mut reg, ids::BAD_POINTERS, b"");
    assert_eq!(r.status, Err(Error::InvalidInput));
    assert!(
        reg.platform().take_logs().is_empty(),
        "log read outside the zone"
    );
    // The runner is fine.
    assert_eq!(call(&mut reg, ids::ECHO, b"ok").1, b"ok");
}

#[test]
fn output_and_input_limits() {
    let mut reg = registry();
    let spec = Spec {
        max_input: 16,
        max_output: 8,
        ..Spec::default()
    };
    reg.load(&build_image(&spec), &dev_options()).unwrap();
    let (r, _) = call(&mut reg, ids::ECHO, &[7u8; 17]);
    assert_eq!(r.status, Err(Error::InputTooLarge));
    assert!(!r.ran);
    // 9 bytes in, output capacity 8: the agent itself refuses.
    let (r, _) = call(&mut reg, ids::ECHO, &[7u8; 9]);
    assert_eq!(r.status, Err(Error::OutputTooLarge));
    assert!(r.ran);
    let (r, out) = call(&mut reg, ids::ECHO, &[7u8; 8]);
    assert_eq!((r.status, out), (Ok(()), vec![7u8; 8]));
    // An agent claiming more output than the buffer holds.
    let (r, out) = call(&mut reg, ids::OVERSIZED_OUTPUT, b"");
    assert_eq!(r.status, Err(Error::OutputTooLarge));
    assert!(out.is_empty());
    // A caller buffer smaller than max_output limits the capacity.
    let mut small = [0u8; 4];
    let r = reg.call(ids::ECHO, b"12345", &mut small, &CallOptions::default());
    assert_eq!(r.status, Err(Error::OutputTooLarge));
    let s = reg.agent(ids::ECHO).unwrap().stats();
    assert_eq!((s.calls, s.rejected, s.failures), (3, 1, 3));
}

#[test]
fn unknown_and_disabled_agents() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    assert_eq!(call(&mut reg, 999, b"").0.status, Err(Error::NotFound));
    reg.set_enabled(ids::ECHO, false).unwrap();
    let (r, _) = call(&mut reg, ids::ECHO, b"x");
    assert_eq!(r.status, Err(Error::Disabled));
    assert!(!r.ran);
    reg.set_enabled(ids::ECHO, true).unwrap();
    assert_eq!(call(&mut reg, ids::ECHO, b"x").1, b"x");
    assert_eq!(reg.set_enabled(999, true), Err(Error::NotFound));
}

#[test]
fn duplicate_ids_across_images_are_rejected() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let err = reg.load(&image(), &dev_options()).unwrap_err();
    assert_eq!(err, LoadError::DuplicateAgentId { id: 1 });
    assert_eq!(err.code(), Error::DuplicateAgentId);
    assert!(err.to_string().contains("agent id 1"), "{err}");
    // Only the first image is loaded, with its agents intact.
    assert_eq!(reg.images().count(), 1);
    // A second image with other ids loads.
    let spec = Spec {
        id_offset: 1000,
        ..Spec::default()
    };
    reg.load(&build_image(&spec), &dev_options()).unwrap();
    assert_eq!(call(&mut reg, 1000 + ids::ECHO, b"two").1, b"two");
    assert_eq!(call(&mut reg, ids::ECHO, b"one").1, b"one");
    // An image sharing just one id with the loaded ones.
    let spec = Spec {
        id_offset: 2000 - ids::ECHO,
        ids: vec![ids::ECHO, ids::COUNTER],
        ..Spec::default()
    };
    reg.load(&build_image(&spec), &dev_options()).unwrap();
    let clash = Spec {
        id_offset: 2000 - ids::ECHO,
        ids: vec![ids::FLAGS, ids::ECHO],
        ..Spec::default()
    };
    assert_eq!(
        reg.load(&build_image(&clash), &dev_options()),
        Err(LoadError::DuplicateAgentId { id: 2000 })
    );
}

#[test]
fn unload_frees_ids_and_zone() {
    let mut reg = registry();
    let id = reg.load(&image(), &dev_options()).unwrap();
    let base = reg.image(id).unwrap().zone().base;
    assert_eq!(reg.unload(id), Ok(ids::ALL.len()));
    assert_eq!(reg.agent_count(), 0);
    assert_eq!(
        call(&mut reg, ids::ECHO, b"").0.status,
        Err(Error::NotFound)
    );
    assert!(!maps_contains(base), "zone still mapped after unload");
    assert_eq!(reg.unload(id), Err(Error::NotFound));
    // Loadable again.
    reg.load(&image(), &dev_options()).unwrap();
    let (img, n) = reg.unload_agent(ids::COUNTER).unwrap();
    assert_eq!(n, ids::ALL.len());
    assert!(reg.image(img).is_none());
}

#[test]
fn tables_are_bounded() {
    let mut reg: Box<Registry<SimPlatform, 2, 60>> =
        Box::new(Registry::new(SimPlatform::new(LogTarget::Capture)));
    reg.load(&image(), &dev_options()).unwrap();
    let spec = |off| Spec {
        id_offset: off,
        ..Spec::default()
    };
    reg.load(&build_image(&spec(100)), &dev_options()).unwrap();
    let e = reg
        .load(&build_image(&spec(200)), &dev_options())
        .unwrap_err();
    assert!(
        matches!(e, LoadError::TableFull { what: "image", .. }),
        "{e}"
    );
    let mut small: Box<Registry<SimPlatform, 4, 20>> =
        Box::new(Registry::new(SimPlatform::new(LogTarget::Capture)));
    small.load(&image(), &dev_options()).unwrap();
    let e = small
        .load(&build_image(&spec(100)), &dev_options())
        .unwrap_err();
    assert!(
        matches!(e, LoadError::TableFull { what: "agent", .. }),
        "{e}"
    );
    assert_eq!(e.code(), Error::TableFull);
}

fn maps_contains(addr: u64) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        let range = l.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let a = u64::from_str_radix(a, 16).unwrap();
        let b = u64::from_str_radix(b, 16).unwrap();
        a <= addr && addr < b
    })
}

/// The permissions /proc/self/maps shows for the page at `addr`.
fn perms_at(addr: u64) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for l in maps.lines() {
        let mut it = l.split_whitespace();
        let range = it.next().unwrap();
        let perms = it.next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let a = u64::from_str_radix(a, 16).unwrap();
        let b = u64::from_str_radix(b, 16).unwrap();
        if a <= addr && addr < b {
            return perms[..3].to_string();
        }
    }
    panic!("{addr:#x} not mapped");
}

#[test]
fn zone_pages_have_real_protections_and_never_wx() {
    let mut reg = registry();
    let id = reg.load(&image(), &dev_options()).unwrap();
    let img = reg.image(id).unwrap();
    let base = img.zone().base;
    let l = *img.layout();
    assert_eq!(perms_at(base + CODE), "r-x");
    assert_eq!(perms_at(base + RODATA), "r--");
    assert_eq!(perms_at(base + DATA), "rw-");
    assert_eq!(perms_at(base + LOAD_SIZE), "---", "guard after the image");
    assert_eq!(perms_at(base + l.heap.offset), "rw-");
    assert_eq!(perms_at(base + l.stack_guard.offset), "---");
    assert_eq!(perms_at(base + l.stack.offset), "rw-");
    assert_eq!(perms_at(base + l.frame.offset), "rw-");
    assert_eq!(perms_at(base + l.total() - 4096), "---");
    let mut checked = 0;
    l.for_each_region(|r| {
        let p = perms_at(base + r.span.offset);
        assert_eq!(p, r.prot.as_str(), "{r:?}");
        assert!(p != "rwx" && !(p.contains('w') && p.contains('x')));
        checked += 1;
        Ok::<(), ()>(())
    })
    .unwrap();
    assert!(checked >= 10);
}

#[test]
fn dynamic_registration() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    assert_eq!(call(&mut reg, ids::REGISTER, b"").0.status, Ok(()));
    let a = reg.agent(ids::DYNAMIC).unwrap();
    assert!(a.is_dynamic());
    assert_eq!(a.name(), "dyn-echo");
    assert_eq!(call(&mut reg, ids::DYNAMIC, b"via dyn").1, b"via dyn");
    // Registering the same id again collides.
    assert_eq!(
        call(&mut reg, ids::REGISTER, b"").0.status,
        Err(Error::DuplicateAgentId)
    );
    // Unloading the image removes the dynamic entry too.
    let img = reg.agent(ids::DYNAMIC).unwrap().image();
    assert_eq!(reg.unload(img), Ok(ids::ALL.len() + 1));
    assert!(reg.agent(ids::DYNAMIC).is_none());
}

#[test]
fn dynamic_id_colliding_with_another_image_is_rejected() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let spec = Spec {
        id_offset: ids::DYNAMIC - ids::ECHO,
        ids: vec![ids::ECHO],
        ..Spec::default()
    };
    reg.load(&build_image(&spec), &dev_options()).unwrap();
    assert_eq!(
        call(&mut reg, ids::REGISTER, b"").0.status,
        Err(Error::DuplicateAgentId)
    );
}

#[test]
fn admin_list_and_denied() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let (r, out) = call(&mut reg, ids::ADMIN_LIST, b"");
    assert_eq!(r.status, Ok(()));
    assert_eq!(out.len(), ids::ALL.len() * AGENT_INFO_SIZE);
    let listed: Vec<u32> = out
        .chunks(AGENT_INFO_SIZE)
        .map(|c| u32::from_le_bytes(c[..4].try_into().unwrap()))
        .collect();
    assert_eq!(listed, ids::ALL.to_vec());
    // The record of the admin agent itself: calls counted before this call.
    let me = out
        .chunks(AGENT_INFO_SIZE)
        .find(|c| u32::from_le_bytes(c[..4].try_into().unwrap()) == ids::ADMIN_LIST)
        .unwrap();
    assert_eq!(
        u32::from_le_bytes(me[8..12].try_into().unwrap()),
        1,
        "admin flag"
    );
    assert_eq!(
        u32::from_le_bytes(me[12..16].try_into().unwrap()),
        1,
        "enabled"
    );
    assert_eq!(&me[32..40], b"blob-10\0");

    // Admin disable of ECHO.
    assert_eq!(call(&mut reg, ids::ADMIN_DISABLE, b"").0.status, Ok(()));
    assert!(!reg.agent(ids::ECHO).unwrap().is_enabled());
    assert_eq!(
        call(&mut reg, ids::ECHO, b"").0.status,
        Err(Error::Disabled)
    );

    // The same code without the admin flag is denied.
    let mut reg = registry();
    let spec = Spec {
        admin_ids: vec![],
        ..Spec::default()
    };
    reg.load(&build_image(&spec), &dev_options()).unwrap();
    assert_eq!(
        call(&mut reg, ids::ADMIN_LIST, b"").0.status,
        Err(Error::Denied)
    );
    assert_eq!(
        call(&mut reg, ids::ADMIN_DISABLE, b"").0.status,
        Err(Error::Denied)
    );
    assert!(reg.agent(ids::ECHO).unwrap().is_enabled());
    let _ = AdminOp::List;
}

#[test]
fn admin_list_needs_room_for_all_records() {
    let mut reg = registry();
    let spec = Spec {
        max_output: (AGENT_INFO_SIZE * 3) as u32,
        ..Spec::default()
    };
    reg.load(&build_image(&spec), &dev_options()).unwrap();
    let (r, _) = call(&mut reg, ids::ADMIN_LIST, b"");
    assert_eq!(r.status, Err(Error::OutputTooLarge));
}

#[test]
fn admin_agents_need_a_trusted_admin_signature() {
    let mut reg = registry();
    let mut opts = dev_options();
    opts.allow_untrusted_admin = false;
    let e = reg.load(&image(), &opts).unwrap_err();
    assert_eq!(
        e,
        LoadError::AdminNotTrusted {
            id: ids::ADMIN_LIST
        }
    );
    assert_eq!(e.code(), Error::Denied);
    // Without admin agents the same policy loads it.
    let spec = Spec {
        admin_ids: vec![],
        ..Spec::default()
    };
    reg.load(&build_image(&spec), &opts).unwrap();
}

#[test]
fn signed_images_and_policies() {
    use ed25519_compact::{KeyPair, Seed};
    use tetd::image::{with_signature, SignatureBlock};
    use tetd::verify::{AllowList, Policy, Signers, UnsignedImages};
    use tetd_kernel::LoadOptions;

    let sign = |bytes: &[u8], kp: &KeyPair| {
        let img = Image::parse(bytes).unwrap();
        let msg: Vec<u8> = img.signed_message_parts().concat();
        let sig = kp.sk.sign(&msg, None);
        with_signature(bytes, &SignatureBlock::new(*kp.pk, *sig)).unwrap()
    };
    let admin_key = KeyPair::from_seed(Seed::new([7; 32]));
    let other_key = KeyPair::from_seed(Seed::new([9; 32]));
    let unsigned = image();
    let signed = sign(&unsigned, &admin_key);
    let by_other = sign(&unsigned, &other_key);
    let list_text = format!("ed25519:{} admin\n", tetd::verify::Hex(&admin_key.pk[..]));
    let list = AllowList::parse(&list_text).unwrap();
    let strict = LoadOptions::new(Policy::require_signed(list));

    let mut reg = registry();
    assert_eq!(
        reg.load(&unsigned, &strict).unwrap_err(),
        LoadError::Verify(Error::Unsigned)
    );
    assert_eq!(
        reg.load(&by_other, &strict).unwrap_err(),
        LoadError::Verify(Error::SignerNotAllowed)
    );
    let mut tampered = signed.clone();
    let n = tampered.len();
    tampered[n - 70] ^= 1; // inside the signature
    assert_eq!(
        reg.load(&tampered, &strict).unwrap_err(),
        LoadError::Verify(Error::BadSignature)
    );
    let id = reg.load(&signed, &strict).unwrap();
    let s = reg.image(id).unwrap().signer().unwrap();
    assert!(s.trusted && s.admin);
    assert_eq!(call(&mut reg, ids::ADMIN_LIST, b"").0.status, Ok(()));
    // Self-consistency only: signed by anyone is fine, but no admin.
    let mut reg = registry();
    let any = LoadOptions::new(Policy {
        signers: Signers::AnyKey,
        unsigned: UnsignedImages::Accept,
    });
    assert_eq!(
        reg.load(&by_other, &any).unwrap_err(),
        LoadError::AdminNotTrusted {
            id: ids::ADMIN_LIST
        }
    );
}

#[test]
fn info_text_reports_agents_zones_and_faults() {
    let mut reg = registry();
    let id = reg.load(&image(), &dev_options()).unwrap();
    call(&mut reg, ids::ECHO, b"x");
    call(&mut reg, ids::ECHO, b"y");
    call(&mut reg, ids::PANIC, b"");
    call(&mut reg, ids::WRITE_CODE, b"");
    let mut buf = vec![0u8; 16384];
    let n = reg.render_info(&mut buf);
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    println!("{text}");
    let base = reg.image(id).unwrap().zone().base;
    assert!(text.starts_with("TETD-G "), "{text}");
    assert!(text.contains("1 image, 20 agents"), "{text}");
    assert!(text.contains(&format!("{base:#018x}")), "{text}");
    let agents_part = text.split_once("\nagents:\n").unwrap().1;
    let line = |id: u32| {
        agents_part
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no line for agent {id}:\n{text}"))
            .to_string()
    };
    let echo = line(ids::ECHO);
    assert!(
        echo.contains("blob-1 ") && echo.contains("exclusive"),
        "{echo}"
    );
    let cols: Vec<&str> = echo.split_whitespace().collect();
    // ID NAME IMAGE MODE FLAGS STATE CALLS FAILED FAULTS TIMEOUTS LAST
    assert_eq!(
        &cols[5..11],
        &["enabled", "2", "0", "0", "0", "ok"],
        "{echo}"
    );
    assert!(line(ids::PANIC).contains("E4 agent panicked"));
    let wc = line(ids::WRITE_CODE);
    let cols: Vec<&str> = wc.split_whitespace().collect();
    assert_eq!(&cols[6..10], &["1", "1", "1", "0"], "{wc}");
    assert!(wc.contains("E5 agent faulted"), "{wc}");
    assert!(text.contains("last fault: vector 14"), "{text}");
    assert!(line(ids::ADMIN_LIST).contains("admin"));
    assert!(line(ids::HANG).ends_with(" -"), "never called");
    // A small buffer gets a cut, well-formed prefix.
    let mut small = [0u8; 100];
    let n = reg.render_info(&mut small);
    assert_eq!(n, 100);
    assert!(std::str::from_utf8(&small[..n]).is_ok());
}

#[test]
fn layout_regions_are_reported_for_fault_addresses() {
    let mut reg = registry();
    reg.load(&image(), &dev_options()).unwrap();
    let (r, _) = call(&mut reg, ids::READ_GUARD, b"");
    assert_eq!(r.status, Err(Error::Fault));
    let f = r.fault.unwrap();
    assert_eq!(f.addr_offset, Some(LOAD_SIZE));
    assert_eq!(f.addr_region, Some(RegionKind::Guard));
    assert!(!f.stack_overflow);
}

#[test]
fn registry_size_is_reported_for_static_placement() {
    // The kernel keeps the registry in a static; make its size visible and
    // keep it bounded.
    let size = std::mem::size_of::<Reg>();
    println!("Registry<SimPlatform> (16 images, 128 agents): {size} bytes");
    assert!(size < 64 * 1024, "{size}");
}
