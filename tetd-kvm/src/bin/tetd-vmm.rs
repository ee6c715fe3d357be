//! `tetd-vmm`: boot a Linux guest with TETD-H attached, under the TETD-rs
//! KVM VMM or QEMU/TCG (`--engine kvm|qemu|auto`), or build a busybox
//! initramfs for it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tetd_kvm::hv::{run_guest, select_engine, EngineChoice, TetdOptions, TetdReport};
use tetd_kvm::vmm::initramfs::{
    build_busybox_initramfs, parse_host_guest, InitramfsSpec, DEFAULT_BUSYBOX,
};
use tetd_kvm::vmm::{VmConfig, VmExit, VmmError, DEFAULT_CMDLINE};

#[derive(Parser)]
#[command(
    name = "tetd-vmm",
    version,
    about = "TETD-rs VMM: boot a Linux guest with TETD-H attached (KVM or QEMU/TCG), build its initramfs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The README's demo: boot the guest with TETD-H attached, load the
    /// signed example agents through tetdg.ko, call each in both modes and
    /// print the results with TETD-H's view (exit 0 only if all matched;
    /// 1 mismatch, 2 error, 3 no KVM/QEMU). `bash scripts/demo.sh` runs it.
    Demo(tetd_kvm::demo::DemoArgs),
    /// Boot a kernel with an initramfs and TETD-H answering its hypercalls;
    /// the exit code is the guest's exit status.
    Boot {
        /// Linux kernel: the vmlinux or bzImage under build/guest/kernel-VERSION/boot/.
        #[arg(long)]
        kernel: PathBuf,
        /// kvm (the project's KVM VMM: blocked zones have no memory slot,
        /// accesses trapped), qemu (QEMU/TCG, uart hypercall transport:
        /// blocked zone pages taken out of the zone file, accesses found
        /// afterwards) or auto (kvm unless /dev/kvm is missing or emulates
        /// guest kernels).
        #[arg(long, default_value = "auto", value_parser = parse_engine)]
        engine: EngineChoice,
        /// Initramfs (see `tetd-vmm initramfs`). Optional with --extra-file (one is built).
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Words appended to the default kernel command line.
        #[arg(long, default_value = "")]
        append: String,
        /// Replace the whole kernel command line.
        #[arg(long, conflicts_with = "append")]
        cmdline: Option<String>,
        /// Number of vCPUs (1..=8).
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
        /// Guest RAM in MiB.
        #[arg(long = "mem", default_value_t = 256)]
        mem_mib: u64,
        /// Wall-clock timeout in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// HOST:GUEST files to put into a freshly built busybox initramfs
        /// (instead of --initrd), e.g. run.sh:/tetd/run.sh.
        #[arg(
            long = "extra-file",
            value_name = "HOST:GUEST",
            conflicts_with = "initrd"
        )]
        extra_files: Vec<String>,
        /// Do not echo the guest console.
        #[arg(long)]
        quiet: bool,
    },
    /// Measure TETD-rs against same-run baselines (docs/performance.md):
    /// prints a markdown table, writes report.json and report.md.
    Bench(tetd_kvm::bench::BenchArgs),
    /// Build a busybox initramfs (newc cpio) with the TETD init and extra files.
    Initramfs {
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// HOST:GUEST files to include, e.g. tetdg.ko:/lib/tetd/tetdg.ko.
        #[arg(long = "file", value_name = "HOST:GUEST")]
        files: Vec<String>,
        /// Static busybox binary.
        #[arg(long, default_value = DEFAULT_BUSYBOX)]
        busybox: PathBuf,
        /// Init script instead of the built-in one.
        #[arg(long)]
        init: Option<PathBuf>,
    },
}

fn spec_from(
    files: &[String],
    busybox: PathBuf,
    init: Option<PathBuf>,
) -> Result<InitramfsSpec, VmmError> {
    let extra = files
        .iter()
        .map(|f| parse_host_guest(f))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InitramfsSpec {
        busybox,
        init,
        extra,
    })
}

fn real_main(cli: Cli) -> Result<ExitCode, VmmError> {
    match cli.cmd {
        Cmd::Demo(args) => Ok(ExitCode::from(tetd_kvm::demo::main(&args))),
        Cmd::Bench(args) => Ok(ExitCode::from(tetd_kvm::bench::main(&args))),
        Cmd::Initramfs {
            output,
            files,
            busybox,
            init,
        } => {
            let image = build_busybox_initramfs(&spec_from(&files, busybox, init)?)?;
            std::fs::write(&output, &image).map_err(|source| VmmError::Io {
                path: output.clone(),
                source,
            })?;
            eprintln!(
                "tetd-vmm: wrote {} ({} bytes)",
                output.display(),
                image.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Boot {
            kernel,
            engine,
            initrd,
            append,
            cmdline,
            vcpus,
            mem_mib,
            timeout,
            extra_files,
            quiet,
        } => {
            let mut _tmp = None;
            let initrd = match initrd {
                Some(i) => Some(i),
                None if !extra_files.is_empty() => {
                    let image = build_busybox_initramfs(&spec_from(
                        &extra_files,
                        DEFAULT_BUSYBOX.into(),
                        None,
                    )?)?;
                    let path =
                        std::env::temp_dir().join(format!("tetd-vmm-{}.cpio", std::process::id()));
                    std::fs::write(&path, image).map_err(|source| VmmError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    _tmp = Some(TempFile(path.clone()));
                    Some(path)
                }
                None => None,
            };
            let mut config = VmConfig::new(kernel, initrd);
            config.cmdline = cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
            config = config.append(&append);
            config.vcpus = vcpus;
            config.mem_mib = mem_mib;
            config.timeout = Duration::from_secs(timeout);
            config.echo_console = !quiet;
            let sel = select_engine(engine)?;
            eprintln!("tetd-vmm: engine {} ({})", sel.engine, sel.reason);
            let run = run_guest(sel.engine, config, TetdOptions::default())?;
            let outcome = run.outcome;
            eprintln!(
                "tetd-vmm: {} after {:.2}s ({} hypercalls)",
                outcome.exit,
                outcome.elapsed.as_secs_f64(),
                outcome.stats.hypercalls
            );
            summarize(&run.report);
            Ok(match outcome.exit {
                VmExit::Status { code, .. } => ExitCode::from(code),
                VmExit::Shutdown | VmExit::Stopped => ExitCode::SUCCESS,
                VmExit::Panic(_) | VmExit::Timeout | VmExit::Error(_) => ExitCode::from(125),
            })
        }
    }
}

fn parse_engine(s: &str) -> Result<EngineChoice, String> {
    s.parse()
}

/// TETD-H's view at the end of the run, on stderr.
fn summarize(r: &TetdReport) {
    let found_after = r.violations.iter().filter(|v| v.found_after).count();
    eprintln!(
        "tetd-vmm: TETD-H: {} hypercall(s), {} blocked-zone violation(s) ({} trapped, {} found afterwards); {}",
        r.total_calls,
        r.violations.len(),
        r.violations.len() - found_after,
        found_after,
        r.blocking_note
    );
    for a in &r.agents {
        eprintln!(
            "tetd-vmm:   agent {:>5} {:<13} {:<9} calls {} failures {} faults {} violations {}",
            a.id,
            a.mode.name(),
            format!("{:?}", a.state.abi()).to_lowercase(),
            a.calls,
            a.failures,
            a.faults,
            a.violations
        );
    }
    if r.seam_trouble.errors > 0 {
        eprintln!(
            "tetd-vmm:   SEAM errors: {} ({} recovered)",
            r.seam_trouble.errors, r.seam_trouble.recovered
        );
    }
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn main() -> ExitCode {
    match real_main(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tetd-vmm: error: {e}");
            ExitCode::from(2)
        }
    }
}
