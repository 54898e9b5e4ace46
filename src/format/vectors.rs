//! Regenerates the golden vectors in `ondisk-format/vectors/` (run only when the format changes,
//! with a version bump): `SSP_WRITE_VECTORS=1 cargo test --lib regenerate_golden_vectors -- --ignored`.

#[cfg(test)]
mod tests {
    use crate::format::node::{encode_node, encode_u64s, tests as nt, Ptr};
    use crate::format::Wr;
    use crate::format::{checkpoint, journal, superblock};

    #[test]
    #[ignore = "writes files; run by hand when the format version changes"]
    fn regenerate_golden_vectors() {
        if std::env::var_os("SSP_WRITE_VECTORS").is_none() {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ondisk-format/vectors");
        std::fs::create_dir_all(&dir).unwrap();
        let pool = *b"pool-id-0123456\0";
        let put = |name: &str, b: Vec<u8>| std::fs::write(dir.join(name), b).unwrap();
        put("superblock.bin", superblock::tests_sample().encode());
        put("checkpoint.bin", checkpoint::tests::sample().encode());
        put("journal.bin", journal::tests::sample().encode(&pool));
        put(
            "journal-sharing.bin",
            journal::tests::sample_sharing().encode(&pool),
        );
        put(
            "journal-mirror.bin",
            journal::tests::sample_mirror().encode(&pool),
        );
        put(
            "journal-zero.bin",
            journal::tests::sample_zero().encode(&pool),
        );
        put(
            "journal-thick.bin",
            journal::tests::sample_thick().encode(&pool),
        );
        let (h, e) = nt::sample_map_zero();
        put(
            "node-map-zero.bin",
            encode_node(&pool, &h, &encode_u64s(&e)),
        );
        put(
            "checkpoint-mirror.bin",
            checkpoint::tests::sample_mirror().encode(),
        );
        let (h, e) = nt::sample_map();
        put("node-map.bin", encode_node(&pool, &h, &encode_u64s(&e)));
        let mut w = Wr::default();
        nt::sample_vol().encode(&mut w);
        nt::sample_seg().encode(&mut w);
        Ptr {
            pba: 0x1234,
            crc: 0xcafe_babe,
            aux: 2,
        }
        .encode(&mut w);
        put("entries.bin", w.buf);
    }
}
