//! Writing images (feature `alloc`): used by `tetd-pack` and by tests.

use alloc::vec;
use alloc::vec::Vec;

use super::*;

/// One segment to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSpec {
    /// Offset from the image base (page aligned).
    pub vaddr: u64,
    /// Size in memory (page multiple).
    pub mem_size: u64,
    /// `PERM_*` bits.
    pub perms: u32,
    /// Contents (at most `mem_size` bytes; the rest is zero-filled at load).
    pub data: Vec<u8>,
}

/// Everything an image is made of; [`ImageBuilder::build`] lays it out,
/// measures it and checks the result with [`Image::parse`].
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    /// Image-wide settings (`agent_count` is filled from `agents`).
    pub manifest: ManifestHeader,
    /// Agent records.
    pub agents: Vec<AgentRecord>,
    /// Segments in address order.
    pub segments: Vec<SegmentSpec>,
    /// Relocation offsets (sorted; slots hold base-relative values).
    pub relocations: Vec<u32>,
    /// Address space size (page multiple).
    pub load_size: u64,
}

fn align8(v: usize) -> usize {
    (v + 7) & !7
}

fn to_u32(v: usize, field: &'static str) -> Result<u32, ImageError> {
    u32::try_from(v).map_err(|_| ImageError::BadHeader {
        field,
        value: v as u64,
        why: "does not fit in 32 bits",
    })
}

impl ImageBuilder {
    /// Serialize, measure and check. The result is an unsigned image.
    pub fn build(&self) -> Result<Vec<u8>, ImageError> {
        let manifest_off = HEADER_SIZE;
        let manifest_len = MANIFEST_HEADER_SIZE + self.agents.len() * AGENT_RECORD_SIZE;
        let segtab_off = align8(manifest_off + manifest_len);
        let segtab_len = self.segments.len() * SEGMENT_ENTRY_SIZE;
        let reloc_off = segtab_off + segtab_len;
        let reloc_len = self.relocations.len() * RELOC_ENTRY_SIZE;
        let data_off = align8(reloc_off + reloc_len);
        let mut data_len = 0usize;
        let mut file_offs = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            file_offs.push(data_len);
            data_len = align8(data_len + s.data.len());
        }
        let body_len = data_off + data_len;
        let mut out = vec![0u8; body_len];

        let header = Header {
            version: FORMAT_VERSION,
            load_size: self.load_size,
            manifest_off: to_u32(manifest_off, "manifest_off")?,
            manifest_len: to_u32(manifest_len, "manifest_len")?,
            segtab_off: to_u32(segtab_off, "segtab_off")?,
            seg_count: to_u32(self.segments.len(), "seg_count")?,
            reloc_off: to_u32(reloc_off, "reloc_off")?,
            reloc_count: to_u32(self.relocations.len(), "reloc_count")?,
            data_off: to_u32(data_off, "data_off")?,
            data_len: to_u32(data_len, "data_len")?,
            body_len: to_u32(body_len, "body_len")?,
            measurement: [0; MEASUREMENT_LEN],
        };

        // Manifest.
        let m = &mut out[manifest_off..manifest_off + manifest_len];
        let mh = &self.manifest;
        let fields = [
            self.agents.len() as u32,
            mh.flags,
            mh.stack_size,
            mh.heap_size,
            mh.max_input,
            mh.max_output,
            mh.mode as u32,
            mh.required_services,
        ];
        for (i, v) in fields.iter().enumerate() {
            m[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        m[32..64].copy_from_slice(&mh.package);
        m[64..80].copy_from_slice(&mh.version);
        for (i, a) in self.agents.iter().enumerate() {
            let r = &mut m[MANIFEST_HEADER_SIZE + i * AGENT_RECORD_SIZE..][..AGENT_RECORD_SIZE];
            r[0..4].copy_from_slice(&a.id.to_le_bytes());
            r[4..8].copy_from_slice(&(a.mode as u32).to_le_bytes());
            r[8..12].copy_from_slice(&a.flags.to_le_bytes());
            r[12..16].copy_from_slice(&a.max_input.to_le_bytes());
            r[16..20].copy_from_slice(&a.max_output.to_le_bytes());
            r[24..32].copy_from_slice(&a.entry.to_le_bytes());
            r[32..64].copy_from_slice(&a.name);
        }

        // Segment table and data.
        for (i, s) in self.segments.iter().enumerate() {
            let e = &mut out[segtab_off + i * SEGMENT_ENTRY_SIZE..][..SEGMENT_ENTRY_SIZE];
            e[0..8].copy_from_slice(&s.vaddr.to_le_bytes());
            e[8..16].copy_from_slice(&s.mem_size.to_le_bytes());
            e[16..20].copy_from_slice(&to_u32(file_offs[i], "file_off")?.to_le_bytes());
            e[20..24].copy_from_slice(&to_u32(s.data.len(), "file_size")?.to_le_bytes());
            e[24..28].copy_from_slice(&s.perms.to_le_bytes());
            let d = data_off + file_offs[i];
            out[d..d + s.data.len()].copy_from_slice(&s.data);
        }
        for (i, r) in self.relocations.iter().enumerate() {
            out[reloc_off + 4 * i..reloc_off + 4 * i + 4].copy_from_slice(&r.to_le_bytes());
        }

        header.write(&mut out[..HEADER_SIZE]);
        let m = compute_measurement(&out);
        out[MEASUREMENT_OFFSET..MEASUREMENT_OFFSET + MEASUREMENT_LEN].copy_from_slice(&m);
        Image::parse(&out)?;
        Ok(out)
    }
}

/// Return `image` with `block` as its signature block (replacing any).
pub fn with_signature(image: &[u8], block: &SignatureBlock) -> Result<Vec<u8>, ImageError> {
    let img = Image::parse(image)?;
    let mut out = img.body().to_vec();
    out.extend_from_slice(&block.to_bytes());
    Ok(out)
}

/// Return `image` without its signature block.
pub fn without_signature(image: &[u8]) -> Result<Vec<u8>, ImageError> {
    Ok(Image::parse(image)?.body().to_vec())
}
