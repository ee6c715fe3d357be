//! `tetd-pack`: build, inspect, sign, verify and run TETD agent images.
//!
//! The command-line reference (and the JSON schema of `--json` output) is
//! `docs/cli.md`. Exit status: 0 success, 1 failure (build error, malformed
//! or rejected image, I/O error), 2 usage error.
//!
//! Layout: each subcommand lives in its own module with a clap `Args`
//! struct and a `run(&Args) -> anyhow::Result<i32>` returning the exit
//! status; `main` only dispatches and prints errors.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod build;
mod inspect;
mod measure;
mod run;
mod sign;
mod util;

/// Build, inspect, sign, verify and run TETD agent images.
#[derive(Parser, Debug)]
#[command(name = "tetd-pack", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compile an agent crate and pack it into a .tetd image.
    Build(build::BuildArgs),
    /// Show what an image contains (header, agents, segments, measurement, signature).
    Inspect(inspect::InspectArgs),
    /// Generate an Ed25519 signing key (PKCS#8, mode 0600) and its .pub allow-list line.
    Keygen(sign::KeygenArgs),
    /// Sign an image (replaces any existing signature).
    Sign(sign::SignArgs),
    /// Verify an image's signature and signer; exit status 0 only if it verifies.
    Verify(sign::VerifyArgs),
    /// Load images into the host simulator and call agents (like SGX simulation mode).
    Run(run::RunArgs),
    /// Recompute the RTMR value a TD reaches by loading these images (in order).
    Measure(measure::MeasureArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Build(a) => build::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Keygen(a) => sign::run_keygen(a),
        Command::Sign(a) => sign::run_sign(a),
        Command::Verify(a) => sign::run_verify(a),
        Command::Run(a) => run::run(a),
        Command::Measure(a) => measure::run(a),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // The reader went away (`tetd-pack inspect x --json | head`): stop
        // quietly, like other Unix tools.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == std::io::ErrorKind::BrokenPipe)
    })
}
