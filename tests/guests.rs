//! End to end with real guests against a real sspd: a ppc64le pseries guest (QEMU TCG) boots a
//! golden root disk from an LU over NBD and personalises it, and an x86_64 guest attaches an LU
//! with the Linux kernel's NBD client. The guests' kernels and userland are Debian packages
//! fetched and cached by scripts/guests/fetch.sh; scripts/guests/build-*.sh build the images.
//!
//! Set SSP_SKIP_GUESTS=1 to skip these tests (they print that they were skipped); otherwise they
//! need qemu-system-ppc64 and qemu-system-x86_64 (scripts/install-deps.sh) and, the first time,
//! the Debian archive. Guest consoles are kept in the test's temp dir and their tail is shown on
//! failure.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const MIB: usize = 1 << 20;

/// True (with a message on the real stderr, which cargo test does not capture) when the guest
/// tests are to be skipped.
fn skip(test: &str) -> bool {
    if std::env::var("SSP_SKIP_GUESTS").as_deref() == Ok("1") {
        let _ = writeln!(
            std::io::stderr(),
            "guests: SKIPPED {test}: SSP_SKIP_GUESTS=1 is set (unset it to boot the QEMU guests)"
        );
        return true;
    }
    false
}

/// Say something on the real stderr (boot times and such), past cargo test's capture.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "guests: {msg}");
}

fn guests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guests")
}

/// Run scripts/guests/SCRIPT with args and extra environment; its stdout, or a panic with
/// everything it printed.
fn script(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let o = Command::new("bash")
        .arg(guests_dir().join(name))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{name} {args:?} failed ({}):\n{out}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The output directory a build script prints last.
fn build(name: &str) -> PathBuf {
    let out = script(name, &[], &[]);
    PathBuf::from(
        out.lines()
            .last()
            .expect("build script printed its output dir"),
    )
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed (scripts/install-deps.sh installs it): {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sspctl(pool: &Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sspctl"))
        .arg("--pool")
        .arg(pool)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sspctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// sspd on 127.0.0.1 (port chosen by the OS) over a fresh pool in a temp dir.
struct Server {
    child: Child,
    port: u16,
    pool: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(lus: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        let pv = format!("{}:1G", dir.path().join("pv0.img").display());
        sspctl(&pool, &["pool", "create", "--pv", &pv]);
        for (name, size) in lus {
            sspctl(&pool, &["lu", "create", name, "--size", size]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_sspd"))
            .args(["--pool", pool.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "sspd exited before listening"
            );
        }
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Server {
            child,
            port,
            pool,
            dir,
        }
    }

    fn uri(&self, lu: &str) -> String {
        format!("nbd://127.0.0.1:{}/{lu}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `sspctl lu list --json`, the entry for `lu`.
    fn lu_info(&self, lu: &str) -> serde_json::Value {
        let out = sspctl(&self.pool, &["--json", "lu", "list"]);
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == lu)
            .unwrap_or_else(|| panic!("no LU {lu} in {out}"))
            .clone()
    }

    fn mapped_blocks(&self, lu: &str) -> u64 {
        self.lu_info(lu)["mapped_blocks"].as_u64().unwrap()
    }

    /// Write a raw image into an LU through NBD.
    fn write_image(&self, lu: &str, image: &Path) {
        run(
            "qemu-img",
            &[
                "convert",
                "-n",
                "-f",
                "raw",
                "-O",
                "raw",
                image.to_str().unwrap(),
                &self.uri(lu),
            ],
        );
    }

    /// Copy an LU out through NBD into a file of the temp dir.
    fn read_lu(&self, lu: &str) -> PathBuf {
        let out = self.path(&format!("{lu}.read.img"));
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                &self.uri(lu),
                out.to_str().unwrap(),
            ],
        );
        out
    }

    /// Boot the ppc64le guest (SLOF) from `lu` with `disk` ("vscsi" or "virtio") and `boot`
    /// ("kernel": -kernel/-initrd with golden.img on the LU; "firmware": SLOF, GRUB from the
    /// PReP partition of golden-disk.img); the guest must activate as `hostname` and power off.
    /// Returns the script's summary line (with the boot time).
    /// `config`: an LU holding a config disk, attached read-only as a second disk (a CD-ROM on
    /// the same spapr-vscsi adapter, or a second virtio-blk disk).
    fn boot_ppc64(
        &self,
        lu: &str,
        hostname: &str,
        disk: &str,
        boot: &str,
        config: Option<&str>,
    ) -> String {
        let log = self.path(&format!("console-{lu}.log"));
        let extra = config.map_or(String::new(), |c| {
            let dev = if disk == "vscsi" {
                "scsi-cd,drive=cfg,bus=scsi0.0"
            } else {
                "virtio-blk-pci,drive=cfg"
            };
            format!(
                "-drive file={},format=raw,if=none,id=cfg,readonly=on -device {dev}",
                self.uri(c)
            )
        });
        let out = script(
            "boot-ppc64.sh",
            &[&self.uri(lu), hostname, disk, boot],
            &[
                ("SSP_GUEST_LOG", log.to_str().unwrap()),
                ("SSP_GUEST_EXTRA_ARGS", &extra),
            ],
        );
        let line = out.lines().last().unwrap_or_default().to_string();
        assert!(line.starts_with("boot-ppc64: OK"), "{out}");
        note(&line);
        line
    }

    /// SIGTERM; the pool must then pass a full check.
    fn stop(mut self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        assert!(self.child.wait().unwrap().success(), "sspd exit status");
        let out = sspctl(&self.pool, &["check"]);
        assert!(out.contains("OK"), "{out}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// e2fsck -fn must find the filesystem image clean.
fn assert_fsck_clean(image: &Path) {
    let o = Command::new("e2fsck")
        .args(["-fn", image.to_str().unwrap()])
        .output()
        .expect("e2fsck (e2fsprogs) is needed");
    assert!(
        o.status.success(),
        "e2fsck -fn {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A file of an ext4 image, read with debugfs.
fn fs_cat(image: &Path, path: &str) -> String {
    let o = Command::new("debugfs")
        .args(["-R", &format!("cat {path}"), image.to_str().unwrap()])
        .output()
        .expect("debugfs (e2fsprogs) is needed");
    assert!(o.status.success(), "debugfs cat {path}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// How many 4 KiB blocks differ between two files of the same size.
fn blocks_differing(a: &Path, b: &Path) -> usize {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let n = a.len().min(b.len());
    a[..n]
        .chunks(4096)
        .zip(b[..n].chunks(4096))
        .filter(|(x, y)| x != y)
        .count()
}

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The root filesystem of a golden image (or of an LU read back): golden.img is one; the
/// root partition of golden-disk.img is copied out to a file in `dir`.
fn root_fs(image: &Path, boot: &str, build: &Path, dir: &Path) -> PathBuf {
    if boot == "kernel" {
        return image.to_path_buf();
    }
    let name = image.file_name().unwrap().to_string_lossy();
    let part = dir.join(format!("{name}.rootfs"));
    std::fs::write(&part, &std::fs::read(image).unwrap()[root_offset(build)..]).unwrap();
    part
}

/// Where golden-disk.img's root partition starts (the MBR and PReP partition are before it).
fn root_offset(build: &Path) -> usize {
    let mib: usize = std::fs::read_to_string(build.join("golden-disk.root-offset-mib"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    mib * MIB
}

/// Boot the golden image from an LU and check, through NBD, that the guest activated itself
/// into its own root filesystem and left it clean. `boot`: "kernel" (golden.img, identity on
/// the kernel command line) or "firmware" (golden-disk.img through SLOF and GRUB, identity in
/// the NVRAM).
fn golden_boot(lu: &str, hostname: &str, disk: &str, boot: &str) {
    let build = build("build-ppc64.sh");
    let (golden, size, source) = match boot {
        "kernel" => (build.join("golden.img"), "64M", "cmdline"),
        _ => (build.join("golden-disk.img"), "128M", "nvram"),
    };
    let server = Server::start(&[(lu, size)]);
    server.write_image(lu, &golden);
    server.boot_ppc64(lu, hostname, disk, boot, None);

    let after = server.read_lu(lu);
    let root = root_fs(&after, boot, &build, server.dir.path());
    assert_fsck_clean(&root);
    assert_eq!(fs_cat(&root, "/etc/hostname").trim(), hostname);
    let marker = fs_cat(&root, "/var/lib/ssp/activated");
    assert!(
        marker.contains(&format!("hostname={hostname}\n"))
            && marker.contains(&format!("source={source}\n")),
        "activation marker: {marker:?}"
    );
    assert_eq!(
        fs_cat(
            &root_fs(&golden, boot, &build, server.dir.path()),
            "/etc/hostname"
        )
        .trim(),
        "ssp-golden"
    );
    let changed = blocks_differing(&golden, &after);
    note(&format!(
        "{lu}: activation changed {changed} of {} 4 KiB blocks",
        std::fs::metadata(&golden).unwrap().len() / 4096
    ));
    assert!(changed > 0 && changed < 1024, "{changed} blocks changed");
    if boot == "firmware" {
        // The MBR and the PReP partition (GRUB) are as captured.
        let (g, a) = (
            std::fs::read(&golden).unwrap(),
            std::fs::read(&after).unwrap(),
        );
        let n = root_offset(&build);
        assert!(g[..n] == a[..n], "MBR or PReP partition changed");
    }
    server.stop();
}

/// How a clone gets its identity.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// The kernel command line (kernel boot) or the NVRAM (firmware boot).
    Boot,
    /// `sspctl clone ... --activation hostname=NAME`: the clone's config disk NAME-config,
    /// attached read-only as a second disk. The boot still passes the name on the command
    /// line or in the NVRAM: the config disk must win (the marker says so).
    ConfigDisk,
}

/// Capture, snapshot, clone and boot: `boot` "kernel" (golden.img) or "firmware"
/// (golden-disk.img); `clones` (LU, hostname, disk) boot at the same time. Checked through NBD
/// and sspctl afterwards.
fn deploy_clones(boot: &str, clones: &[(&str, &str, &str)], identity: Identity) {
    let build = build("build-ppc64.sh");
    let (golden, size, mut source) = match boot {
        "kernel" => (build.join("golden.img"), "64M", "cmdline"),
        _ => (build.join("golden-disk.img"), "128M", "nvram"),
    };
    if identity == Identity::ConfigDisk {
        source = "config-disk";
    }
    let server = Server::start(&[("golden-rootvg", size)]);
    server.write_image("golden-rootvg", &golden);
    sspctl(
        &server.pool,
        &["image", "capture", "golden-rootvg", "golden-image"],
    );
    sspctl(&server.pool, &["snapshot", "create", "golden-image@deploy"]);
    let config = |lu: &str| format!("{lu}-config");
    let mut configs = Vec::new();
    for &(lu, hostname, _) in clones {
        if identity == Identity::ConfigDisk {
            let spec = format!("hostname={hostname}");
            let out = sspctl(
                &server.pool,
                &["clone", "golden-image@deploy", lu, "--activation", &spec],
            );
            assert!(
                out.contains(&format!("config disk {}", config(lu))),
                "{out}"
            );
            configs.push((
                config(lu),
                std::fs::read(server.read_lu(&config(lu))).unwrap(),
            ));
        } else {
            sspctl(&server.pool, &["clone", "golden-image@deploy", lu]);
        }
    }

    std::thread::scope(|s| {
        for &(lu, hostname, disk) in clones {
            let server = &server;
            let cfg = (identity == Identity::ConfigDisk).then(|| config(lu));
            s.spawn(move || server.boot_ppc64(lu, hostname, disk, boot, cfg.as_deref()));
        }
    });
    // The config disks are read-only: as they were made.
    for (c, before) in &configs {
        let after = std::fs::read(server.read_lu(c)).unwrap();
        assert!(after == *before, "config disk {c} changed");
    }

    let golden_bytes = std::fs::read(&golden).unwrap();
    for &(lu, hostname, _) in clones {
        let after = server.read_lu(lu);
        let root = root_fs(&after, boot, &build, server.dir.path());
        assert_fsck_clean(&root);
        assert_eq!(fs_cat(&root, "/etc/hostname").trim(), hostname, "{lu}");
        let marker = fs_cat(&root, "/var/lib/ssp/activated");
        assert!(
            marker.contains(&format!("hostname={hostname}\n"))
                && marker.contains(&format!("source={source}\n")),
            "{lu}: activation marker {marker:?}"
        );
        if boot == "firmware" {
            let n = root_offset(&build);
            let a = std::fs::read(&after).unwrap();
            assert!(
                golden_bytes[..n] == a[..n],
                "{lu}: MBR or PReP partition changed"
            );
        }
        // The clone owns exactly what it wrote: at least every block that differs from the
        // image, and not much more.
        let changed = blocks_differing(&golden, &after);
        let st: serde_json::Value =
            serde_json::from_str(&sspctl(&server.pool, &["--json", "file", "stat", lu])).unwrap();
        let owned = st["owned_blocks"].as_u64().unwrap() as usize;
        let shared = st["shared_blocks"].as_u64().unwrap();
        note(&format!(
            "{lu}: {changed} blocks differ from the image; file stat: owned {owned}, shared {shared}"
        ));
        assert!(
            changed > 0 && owned >= changed && owned <= changed + 64,
            "{lu}: {st}"
        );
        assert!(shared > 0, "{lu}: {st}");
    }
    // Nothing leaked between the clones, and the image is as captured.
    for name in ["golden-rootvg", "golden-image", "golden-image@deploy"] {
        let back = std::fs::read(server.read_lu(name)).unwrap();
        assert!(
            back == golden_bytes,
            "{name} is not the golden disk any more"
        );
    }
    server.stop();
}

#[test]
fn ppc64_pseries_spapr_vscsi_golden_disk_activates_over_nbd() {
    if skip("ppc64_pseries_spapr_vscsi_golden_disk_activates_over_nbd") {
        return;
    }
    golden_boot("vm-vscsi", "ssp-vm1", "vscsi", "kernel");
}

/// The deployment story: the golden disk written into an LU over NBD, captured as a client
/// image, the image snapshotted, two linked clones of the snapshot booted at once (one on
/// spapr-vscsi, one on virtio-blk). Each personalises its own root filesystem; the image stays
/// byte for byte as captured and each clone owns only the blocks it changed.
#[test]
fn ppc64_pseries_two_linked_clones_of_a_captured_image_boot_and_personalise() {
    if skip("ppc64_pseries_two_linked_clones_of_a_captured_image_boot_and_personalise") {
        return;
    }
    deploy_clones(
        "kernel",
        &[
            ("vm1-rootvg", "ssp-vm1", "vscsi"),
            ("vm2-rootvg", "ssp-vm2", "virtio"),
        ],
        Identity::Boot,
    );
}

/// Firmware boot of linked clones, no -kernel: SLOF loads GRUB (powerpc-ieee1275) from the
/// PReP partition of the captured full disk, GRUB the kernel and initramfs from its root
/// partition. Two clones of one image boot at once (spapr-vscsi with the config disk as a
/// CD-ROM, virtio-blk with it as a second disk) and come up with different names, each read
/// from its own `clone --activation` config disk.
#[test]
fn ppc64_pseries_firmware_boot_of_two_linked_clones_named_by_their_config_disks() {
    if skip("ppc64_pseries_firmware_boot_of_two_linked_clones_named_by_their_config_disks") {
        return;
    }
    deploy_clones(
        "firmware",
        &[
            ("vm3-rootvg", "ssp-vm3", "vscsi"),
            ("vm5-rootvg", "ssp-vm5", "virtio"),
        ],
        Identity::ConfigDisk,
    );
}

/// `sspctl clone IMAGE@SNAP NEW --activation hostname=NAME`: the identity comes from the
/// clone's config disk NEW-config (ISO 9660 "cidata": NoCloud meta-data and ovf-env.xml), a
/// read-only client image served as a second NBD export beside the root disk; it wins over the
/// kernel command line.
#[test]
fn ppc64_pseries_linked_clone_activates_from_its_clone_activation_config_disk() {
    if skip("ppc64_pseries_linked_clone_activates_from_its_clone_activation_config_disk") {
        return;
    }
    deploy_clones(
        "kernel",
        &[("vm4-rootvg", "ssp-vm4", "vscsi")],
        Identity::ConfigDisk,
    );
}

#[test]
fn x86_64_kernel_nbd_client_writes_reads_and_discards() {
    if skip("x86_64_kernel_nbd_client_writes_reads_and_discards") {
        return;
    }
    build("build-x86.sh");
    let lu = "nbd-attach";
    let server = Server::start(&[(lu, "64M")]);

    // Fill [1 MiB, 9 MiB) from the host first: the guest's discard must give half of it back.
    let fill = server.path("fill.bin");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = vec![0u8; 9 * MIB];
    for c in data[MIB..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    std::fs::write(&fill, &data).unwrap();
    server.write_image(lu, &fill);
    let before = server.mapped_blocks(lu);
    assert_eq!(before as usize * 4096, 8 * MIB, "{}", server.lu_info(lu));

    let log = server.path("console-x86.log");
    let out = script(
        "nbd-client-x86.sh",
        &[&server.port.to_string(), lu],
        &[("SSP_GUEST_LOG", log.to_str().unwrap())],
    );
    note(out.lines().last().unwrap_or_default());
    let result = out
        .lines()
        .find(|l| l.starts_with("SSP-NBD-RESULT ok "))
        .unwrap_or_else(|| panic!("no result line in {out}"));
    let field = |k: &str| {
        result
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {result}"))
            .to_string()
    };

    // The host sees, through NBD, what the guest wrote and discarded.
    let lu_data = std::fs::read(server.read_lu(lu)).unwrap();
    assert_eq!(lu_data.len(), 64 * MIB);
    assert!(lu_data[..MIB].iter().all(|&b| b == 0), "first MiB touched");
    assert!(
        lu_data[MIB..5 * MIB].iter().all(|&b| b == 0),
        "the discarded range does not read as zeroes"
    );
    assert_eq!(sha256(&lu_data[5 * MIB..9 * MIB]), field("kept_sha256"));
    assert!(
        lu_data[9 * MIB..].iter().all(|&b| b == 0),
        "past 9 MiB touched"
    );
    assert_ne!(
        sha256(&lu_data[5 * MIB..9 * MIB]),
        sha256(&data[5 * MIB..9 * MIB]),
        "the guest's write did not land"
    );

    // The discard gave the space back: 4 MiB of the 8 MiB stay mapped.
    let after = server.mapped_blocks(lu);
    note(&format!(
        "{lu}: {before} blocks mapped before the guest, {after} after its discard"
    ));
    assert_eq!(
        after as usize * 4096,
        4 * MIB,
        "after the discard: {}",
        server.lu_info(lu)
    );
    server.stop();
}
