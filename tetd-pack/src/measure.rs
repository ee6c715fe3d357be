//! `tetd-pack measure`: recompute the RTMR value a TD reaches by loading
//! images, from the image files — the host-side half of the attestation
//! hook (`docs/attestation.md`).
//!
//! The guest module extends [`tetd::abi::AGENT_RTMR_INDEX`] with each
//! loaded image's measurement, in load order:
//! `RTMR = SHA-384(RTMR || measurement)` ([`tetd::measure`]). Each image is
//! parsed and its measurement checked against its content (a file whose
//! measurement field does not match is rejected, naming the file).

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;
use tetd::abi::tdx::{NUM_RTMRS, RTMR_SIZE};
use tetd::abi::AGENT_RTMR_INDEX;
use tetd::image::Image;
use tetd::measure::{extend, RtmrValue};

use crate::util::hex;

/// Arguments of `tetd-pack measure`.
#[derive(Args, Debug)]
#[command(after_help = "\
EXAMPLES:
  tetd-pack measure echo.tetd admin.tetd              (in the order they are loaded)
  tetd-pack measure echo.tetd admin.tetd --json
  tetd-pack measure echo.tetd --initial <96 hex digits of the register before>")]
pub struct MeasureArgs {
    /// Images, in the order the guest loads them.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// The RTMR the guest extends (0..3); only reported. Default: the one
    /// the guest module uses (tetd::abi::AGENT_RTMR_INDEX).
    #[arg(long, value_name = "N", default_value_t = AGENT_RTMR_INDEX)]
    pub rtmr_index: u64,
    /// The register's value before the first image (96 hex digits);
    /// default: 48 zero bytes, the value at TD start.
    #[arg(long, value_name = "HEX")]
    pub initial: Option<String>,
    /// Print one JSON document (schema `tetd-measure/1`).
    #[arg(long)]
    pub json: bool,
}

fn parse_value(s: &str) -> Result<RtmrValue> {
    let s = s.trim();
    if s.len() != 2 * RTMR_SIZE || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!("--initial: expected {} hex digits", 2 * RTMR_SIZE);
    }
    let mut v = [0u8; RTMR_SIZE];
    for (i, b) in v.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(v)
}

/// Run `tetd-pack measure`; returns the exit status.
pub fn run(a: &MeasureArgs) -> Result<i32> {
    if a.rtmr_index >= NUM_RTMRS as u64 {
        bail!(
            "--rtmr-index {}: a TD has RTMR0..RTMR{}",
            a.rtmr_index,
            NUM_RTMRS - 1
        );
    }
    let mut value = match &a.initial {
        Some(h) => parse_value(h)?,
        None => [0u8; RTMR_SIZE],
    };
    let initial = value;
    let mut steps = Vec::new();
    for path in &a.images {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let img = Image::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let m = *img.measurement();
        value = extend(&value, &m);
        steps.push((path, img.manifest().package, m, value));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        let images: Vec<_> = steps
            .iter()
            .map(|(p, pkg, m, v)| {
                json!({
                    "path": p.display().to_string(),
                    "package": decode(pkg),
                    "measurement": hex(m),
                    "rtmr_after": hex(v),
                })
            })
            .collect();
        let doc = json!({
            "schema": "tetd-measure/1",
            "rtmr_index": a.rtmr_index,
            "initial": hex(&initial),
            "images": images,
            "rtmr": hex(&value),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        for (p, pkg, m, _) in &steps {
            writeln!(out, "{}  {} ({})", hex(m), p.display(), decode(pkg))?;
        }
        writeln!(out, "RTMR{} {}", a.rtmr_index, hex(&value))?;
    }
    Ok(0)
}

fn decode(raw: &[u8]) -> String {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_value_parsing() {
        assert_eq!(parse_value(&"00".repeat(48)).unwrap(), [0; 48]);
        assert_eq!(parse_value(&"aB".repeat(48)).unwrap(), [0xab; 48]);
        assert!(parse_value("00").is_err());
        assert!(parse_value(&"zz".repeat(48)).is_err());
    }
}
