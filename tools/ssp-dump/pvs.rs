//! The PVs of a pool, opened read-only: their superblocks, checkpoint slots, and reading a
//! pool block (PBA) from whichever failure group holds a copy that verifies.

use anyhow::{anyhow, bail, Context, Result};
use ssp::format::checkpoint::{Checkpoint, CKPT_OFFSETS};
use ssp::format::node::{decode_node, NodeHeader, NodeKind};
use ssp::format::superblock::{Superblock, SB_OFFSETS};
use ssp::format::{BLOCK, BLOCK_U64, SEG_BLOCKS};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One superblock copy or checkpoint slot: what decoded, or why it did not.
pub struct Slot<T> {
    pub offset: u64,
    pub found: Result<T, String>,
}

pub struct Pv {
    pub path: PathBuf,
    file: File,
    pub superblocks: Vec<Slot<Superblock>>,
    /// The valid superblock copy with the highest generation (ties: copy A).
    pub sb: Superblock,
    pub checkpoints: Vec<Slot<Checkpoint>>,
}

impl Pv {
    /// Open `path` read-only and decode both superblock copies; refuses a file where neither
    /// verifies (not a PV, or its header is destroyed).
    pub fn open(path: &Path) -> Result<Pv> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut superblocks = Vec::new();
        for off in SB_OFFSETS {
            let found = read_block(&file, off)
                .and_then(|b| Superblock::decode(&b).map_err(|e| e.to_string()));
            superblocks.push(Slot { offset: off, found });
        }
        let sb = superblocks
            .iter()
            .filter_map(|s| s.found.as_ref().ok())
            .fold(None::<&Superblock>, |best, sb| match best {
                Some(b) if b.generation >= sb.generation => Some(b),
                _ => Some(sb),
            })
            .cloned()
            .ok_or_else(|| {
                let why: Vec<String> = superblocks
                    .iter()
                    .map(|s| {
                        format!(
                            "copy at {}: {}",
                            s.offset,
                            s.found.as_ref().err().map_or("ok", |e| e.as_str())
                        )
                    })
                    .collect();
                anyhow!(
                    "{}: not an ssp PV, or both superblock copies are damaged ({})",
                    path.display(),
                    why.join("; ")
                )
            })?;
        Ok(Pv {
            path: path.to_owned(),
            file,
            superblocks,
            sb,
            checkpoints: Vec::new(),
        })
    }

    /// Decode both checkpoint slots (needs the pool id, which seeds their checksum).
    fn load_checkpoints(&mut self) {
        let id = self.sb.pool_id;
        self.checkpoints = CKPT_OFFSETS
            .iter()
            .map(|&off| Slot {
                offset: off,
                found: read_block(&self.file, off)
                    .and_then(|b| Checkpoint::decode(&b, &id).map_err(|e| e.to_string())),
            })
            .collect();
    }

    pub fn read(&self, offset: u64) -> Result<Vec<u8>, String> {
        read_block(&self.file, offset)
    }

    /// Both slots of the pool directory copy (FORMAT.md §3.10): what decoded, or why not
    /// (none when the PV has no room for them).
    pub fn directory_copies(&self) -> Vec<Slot<ssp::format::dircopy::DirCopy>> {
        use ssp::format::dircopy::{slot_offsets, DirCopy, DIRCOPY_MAGIC, HEADER_BYTES};
        let sb = &self.sb;
        let Some(slots) = slot_offsets(sb.journal_offset, sb.journal_blocks, sb.data_offset) else {
            return Vec::new();
        };
        slots
            .iter()
            .filter_map(|&offset| {
                let mut head = vec![0u8; HEADER_BYTES];
                // A slot never written (no magic) is not shown.
                if self.file.read_exact_at(&mut head, offset).is_ok()
                    && head.get(..8) != Some(&DIRCOPY_MAGIC.to_le_bytes()[..])
                {
                    return None;
                }
                let found = self
                    .file
                    .read_exact_at(&mut head, offset)
                    .map_err(|e| e.to_string())
                    .and_then(|_| DirCopy::payload_len(&head).map_err(|e| e.to_string()))
                    .and_then(|len| {
                        let mut buf = vec![0u8; HEADER_BYTES + len];
                        self.file
                            .read_exact_at(&mut buf, offset)
                            .map_err(|e| e.to_string())?;
                        DirCopy::decode(&buf, &sb.pool_id).map_err(|e| e.to_string())
                    });
                Some(Slot { offset, found })
            })
            .collect()
    }

    /// Byte offset of pool segment `seg` slot `slot` on this PV, if the PV holds it.
    fn locate(&self, seg: u64, slot: u64) -> Option<u64> {
        let first = self.sb.first_pool_segment;
        if seg < first || seg - first >= self.sb.pv_segments {
            return None;
        }
        Some(self.sb.data_offset + ((seg - first) * SEG_BLOCKS + slot) * BLOCK_U64)
    }
}

fn read_block(f: &File, offset: u64) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; BLOCK];
    f.read_exact_at(&mut b, offset)
        .map_err(|e| format!("cannot read 4096 bytes at {offset}: {e}"))?;
    Ok(b)
}

/// Every PV of one pool, in `pv_index` order.
pub struct PoolPvs {
    pub pvs: Vec<Pv>,
    pub pool_id: [u8; 16],
    /// The newest valid checkpoint and the PV index and slot it was read from.
    pub ckpt: Checkpoint,
    pub ckpt_from: (u32, u64),
}

impl PoolPvs {
    pub fn open(paths: &[PathBuf]) -> Result<PoolPvs> {
        let mut pvs = paths
            .iter()
            .map(|p| Pv::open(p))
            .collect::<Result<Vec<_>>>()?;
        let Some(first) = pvs.first() else {
            bail!("no PV given");
        };
        let pool_id = first.sb.pool_id;
        for p in &pvs {
            if p.sb.pool_id != pool_id {
                bail!(
                    "{} belongs to another pool ({:?}, id {}) than {} ({:?}, id {})",
                    p.path.display(),
                    p.sb.pool_name,
                    hex(&p.sb.pool_id),
                    first.path.display(),
                    first.sb.pool_name,
                    hex(&pool_id)
                );
            }
        }
        pvs.sort_by_key(|p| p.sb.pv_index);
        for w in pvs.windows(2) {
            if let [a, b] = w {
                if a.sb.pv_index == b.sb.pv_index {
                    bail!(
                        "{} and {} are the same PV (index {})",
                        a.path.display(),
                        b.path.display(),
                        a.sb.pv_index
                    );
                }
            }
        }
        for p in &mut pvs {
            p.load_checkpoints();
        }
        let mut best: Option<(Checkpoint, (u32, u64))> = None;
        for p in &pvs {
            for s in &p.checkpoints {
                if let Ok(c) = &s.found {
                    if best
                        .as_ref()
                        .is_none_or(|(b, _)| c.generation > b.generation)
                    {
                        best = Some((c.clone(), (p.sb.pv_index, s.offset)));
                    }
                }
            }
        }
        let (ckpt, ckpt_from) = best.ok_or_else(|| {
            anyhow!("no checkpoint slot verifies on any PV given: the pool cannot be read")
        })?;
        Ok(PoolPvs {
            pvs,
            pool_id,
            ckpt,
            ckpt_from,
        })
    }

    pub fn pv(&self, index: u32) -> Option<&Pv> {
        self.pvs.iter().find(|p| p.sb.pv_index == index)
    }

    /// Read the metadata node at `pba` from any copy that verifies against `crc` and is the
    /// node expected (`kind`, `level`, `id`); the error names every copy tried.
    pub fn node(
        &self,
        pba: u64,
        crc: u32,
        kind: NodeKind,
        level: u8,
        id: u64,
    ) -> Result<(NodeHeader, Vec<u8>)> {
        let (seg, slot) = (pba / SEG_BLOCKS, pba % SEG_BLOCKS);
        let mut tried = Vec::new();
        for p in &self.pvs {
            let Some(off) = p.locate(seg, slot) else {
                continue;
            };
            let why = match p.read(off) {
                Err(e) => e,
                Ok(b) => match decode_node(&b, &self.pool_id) {
                    Err(e) => e.to_string(),
                    Ok((h, payload)) => {
                        let stored = ssp::format::node::node_crc(&self.pool_id, &b);
                        if stored != crc {
                            format!("checksum {stored:#010x}, the pointer says {crc:#010x}")
                        } else if h.kind != kind || h.level != level || h.id != id {
                            format!(
                                "holds {:?} level {} id {}, expected {kind:?} level {level} id {id}",
                                h.kind, h.level, h.id
                            )
                        } else {
                            return Ok((h, payload.to_vec()));
                        }
                    }
                },
            };
            tried.push(format!("{} at {off}: {why}", p.path.display()));
        }
        if tried.is_empty() {
            bail!("PBA {pba} (segment {seg}) is on none of the PVs given");
        }
        bail!(
            "{kind:?} node at PBA {pba} does not verify: {}",
            tried.join("; ")
        )
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
