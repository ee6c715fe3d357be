//! `tetd-vmm`: boot a Linux guest under the TETD-rs KVM VMM, or build a
//! busybox initramfs for it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tetd_kvm::vmm::initramfs::{
    build_busybox_initramfs, parse_host_guest, InitramfsSpec, DEFAULT_BUSYBOX,
};
use tetd_kvm::vmm::{run_vm, NoHypercalls, VmConfig, VmExit, VmmError, DEFAULT_CMDLINE};

#[derive(Parser)]
#[command(
    name = "tetd-vmm",
    version,
    about = "TETD-rs KVM VMM: boot a Linux guest, build its initramfs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a bzImage with an initramfs; the exit code is the guest's exit status.
    Boot {
        /// Linux bzImage (e.g. build/guest/kernel-<ver>/boot/vmlinuz-<ver>).
        #[arg(long)]
        kernel: PathBuf,
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
            let (outcome, _) = run_vm(config, NoHypercalls)?;
            eprintln!(
                "tetd-vmm: {} after {:.2}s ({} exits)",
                outcome.exit,
                outcome.elapsed.as_secs_f64(),
                outcome.stats.exits
            );
            Ok(match outcome.exit {
                VmExit::Status { code, .. } => ExitCode::from(code),
                VmExit::Shutdown | VmExit::Stopped => ExitCode::SUCCESS,
                VmExit::Panic(_) | VmExit::Timeout | VmExit::Error(_) => ExitCode::from(125),
            })
        }
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
