//! `sspctl clone SRC NEW --activation hostname=...`: the clone's config disk `NEW-config`, a
//! read-only client image holding an ISO 9660 "cidata" filesystem (cloud-init NoCloud and an
//! OVF environment), checked through sspd and NBD with nbdinfo, qemu-img, qemu-io, blkid and
//! xorriso; removed with its clone, and only with its clone.

mod common;
use common::server::*;
use serde_json::Value;
use ssp::admin::{AdminReply, AdminRequest};
use std::path::{Path, PathBuf};
use std::process::Command;

fn nbdinfo_json(uri: &str) -> Value {
    let out = run("nbdinfo", &["--json", uri]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("nbdinfo --json {uri}: {e}: {out}"))
}

fn exported(uri: &str) -> bool {
    Command::new("nbdinfo")
        .args(["--size", uri])
        .output()
        .unwrap()
        .status
        .success()
}

/// Copy an export out through NBD.
fn read_out(uri: &str, to: &Path) {
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            uri,
            to.to_str().unwrap(),
        ],
    );
}

/// Extract an ISO image's files with xorriso (Rock Ridge names) into `dir`.
fn extract_iso(iso: &Path, dir: &Path) -> Vec<String> {
    run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            iso.to_str().unwrap(),
            "-extract",
            "/",
            dir.to_str().unwrap(),
        ],
    );
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The hostname the golden image's activation engine (scripts/guests/activate.sh) reads from
/// a config disk's ovf-env.xml, with its own sed expressions.
fn engine_ovf_hostname(ovf: &Path) -> String {
    let script = r#"sed 's/>/>\n/g' "$1" |
  sed -n 's/.*oe:key="[^"]*hostname"[^>]*oe:value="\([^"]*\)".*/\1/p' | head -1"#;
    let o = Command::new("sh")
        .args(["-c", script, "sh", ovf.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn clone_with(s: &Server, src: &str, name: &str, activation: &str) -> String {
    sspctl(&s.pool, &["clone", src, name, "--activation", activation])
}

fn config_of(s: &Server, dir: &Path, clone: &str) -> (PathBuf, Vec<String>) {
    let iso = dir.join(format!("{clone}-config.iso"));
    read_out(&s.uri(&format!("{clone}-config")), &iso);
    let x = dir.join(format!("{clone}-config.d"));
    let names = extract_iso(&iso, &x);
    (x, names)
}

#[test]
fn clone_with_activation_gets_a_read_only_cidata_config_disk_over_nbd() {
    let s = Server::start(&[("golden", "16M")]);
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("golden.raw");
    random_file(&golden, 4 << 20);
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            golden.to_str().unwrap(),
            &s.uri("golden"),
        ],
    );
    sspctl(&s.pool, &["image", "capture", "golden", "img"]);
    sspctl(&s.pool, &["snapshot", "create", "img@deploy"]);

    let out = clone_with(
        &s,
        "img@deploy",
        "vm1",
        "hostname=ssp-vm1,ip=10.1.2.3/24,gateway=10.1.2.1,dns=10.1.2.53,dns=10.1.2.54,domain=example.com,adapter=5",
    );
    assert!(
        out.contains("created linked clone vm1 of img@deploy"),
        "{out}"
    );
    assert!(out.contains("activation config disk vm1-config"), "{out}");
    let out = sspctl(
        &s.pool,
        &[
            "--json",
            "clone",
            "img@deploy",
            "vm2",
            "--activation",
            "hostname=ssp-vm2",
        ],
    );
    let made: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made[0]["name"], "vm2");
    assert_eq!(made[0]["kind"], "clone");
    assert_eq!(made[1]["name"], "vm2-config");
    assert_eq!(made[1]["kind"], "image");

    // The config disks are client images, read-only over NBD; the clones are writable and
    // hold the image's data.
    let images = sspctl(&s.pool, &["--json", "image", "list"]);
    for c in ["vm1-config", "vm2-config"] {
        assert!(images.contains(&format!("\"{c}\"")), "{images}");
        let info = nbdinfo_json(&s.uri(c));
        let e = &info["exports"][0];
        assert_eq!(e["is_read_only"], true, "{info}");
        assert_eq!(e["export-size"], 1 << 20, "{info}");
        let o = Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x55 0 4k", &s.uri(c)])
            .output()
            .unwrap();
        let said =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() || said.contains("failed") || said.contains("read-only"),
            "a write to {c} went through: {said}"
        );
    }
    assert_eq!(
        nbdinfo_json(&s.uri("vm1"))["exports"][0]["is_read_only"],
        false
    );
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            golden.to_str().unwrap(),
            &s.uri("vm1"),
        ],
    );

    // What a guest sees: an ISO 9660 filesystem labelled cidata (how cloud-init's NoCloud
    // finds it) with Rock Ridge names.
    let iso = dir.path().join("vm1-config.iso");
    read_out(&s.uri("vm1-config"), &iso);
    if let Ok(o) = Command::new("blkid")
        .args(["-p", "-o", "export", iso.to_str().unwrap()])
        .output()
    {
        let b = String::from_utf8_lossy(&o.stdout);
        assert!(
            b.contains("TYPE=iso9660") && b.contains("LABEL=cidata"),
            "{b}"
        );
    }
    let pvd = run("xorriso", &["-indev", iso.to_str().unwrap(), "-pvd_info"]);
    assert!(pvd.contains("Volume Id    : cidata"), "{pvd}");

    let (x, names) = config_of(&s, dir.path(), "vm1");
    assert_eq!(
        names,
        ["meta-data", "network-config", "ovf-env.xml", "user-data"]
    );
    let file = |n: &str| std::fs::read_to_string(x.join(n)).unwrap();
    let md = file("meta-data");
    assert!(md.contains("\nlocal-hostname: ssp-vm1\n"), "{md}");
    assert!(md.starts_with("instance-id: ssp-vm1-"), "{md}");
    let ud = file("user-data");
    assert!(
        ud.starts_with("#cloud-config\n")
            && ud.contains("\nhostname: ssp-vm1\n")
            && ud.contains("\nfqdn: ssp-vm1.example.com\n"),
        "{ud}"
    );
    let nc = file("network-config");
    assert!(
        nc.starts_with("version: 2\n")
            && nc.contains("addresses: [10.1.2.3/24]")
            && nc.contains("via: 10.1.2.1")
            && nc.contains("addresses: [10.1.2.53, 10.1.2.54]"),
        "{nc}"
    );
    let ovf = file("ovf-env.xml");
    for (k, v) in [
        ("system.networking.hostname", "ssp-vm1"),
        ("system.networking.domainname", "example.com"),
        ("system.networking.ipv4defaultgateway", "10.1.2.1"),
        ("system.networking.dnsIPaddresses", "10.1.2.53,10.1.2.54"),
        ("adapter.networking.usedhcpv4.5", "false"),
        ("adapter.networking.ipv4addresses.5", "10.1.2.3"),
        ("adapter.networking.ipv4netmasks.5", "255.255.255.0"),
    ] {
        let p = format!(r#"oe:key="com.ibm.ovf.vmcontrol.{k}" oe:value="{v}""#);
        assert!(ovf.contains(&p), "{p} not in {ovf}");
    }
    assert_eq!(engine_ovf_hostname(&x.join("ovf-env.xml")), "ssp-vm1");

    // vm2 has its own identity, DHCP and no network-config.
    let (x2, names2) = config_of(&s, dir.path(), "vm2");
    assert_eq!(names2, ["meta-data", "ovf-env.xml", "user-data"]);
    let md2 = std::fs::read_to_string(x2.join("meta-data")).unwrap();
    assert!(md2.contains("\nlocal-hostname: ssp-vm2\n"), "{md2}");
    let ovf2 = std::fs::read_to_string(x2.join("ovf-env.xml")).unwrap();
    assert!(ovf2.contains(r#"usedhcpv4.1" oe:value="true""#), "{ovf2}");
    assert_eq!(engine_ovf_hostname(&x2.join("ovf-env.xml")), "ssp-vm2");

    // Refusals leave nothing behind: a taken config-disk name, a bad spec, a missing source.
    sspctl(&s.pool, &["lu", "create", "vm3-config", "--size", "1M"]);
    let e = sspctl_fails(
        &s.pool,
        &["clone", "img@deploy", "vm3", "--activation", "hostname=vm3"],
    );
    assert!(e.contains("vm3-config already exists"), "{e}");
    assert!(!exported(&s.uri("vm3")));
    let e = sspctl_fails(
        &s.pool,
        &["clone", "img@deploy", "vm5", "--activation", "ip=10.0.0.1"],
    );
    assert!(e.contains("hostname=NAME is required"), "{e}");
    let e = sspctl_fails(
        &s.pool,
        &[
            "clone",
            "nothing@here",
            "vm6",
            "--activation",
            "hostname=vm6",
        ],
    );
    assert!(e.contains("nothing@here"), "{e}");
    assert!(!exported(&s.uri("vm5")) && !exported(&s.uri("vm5-config")));
    assert!(!exported(&s.uri("vm6")) && !exported(&s.uri("vm6-config")));

    // Removing a clone removes its config disk; an image that merely has such a name stays.
    let out = sspctl(&s.pool, &["lu", "remove", "vm1"]);
    assert!(
        out.contains("removed LU vm1") && out.contains("config disk vm1-config"),
        "{out}"
    );
    assert!(!exported(&s.uri("vm1-config")));
    assert!(exported(&s.uri("vm2-config")));
    sspctl(&s.pool, &["lu", "create", "other", "--size", "4M"]);
    sspctl(&s.pool, &["image", "capture", "golden", "other-config"]);
    let out = sspctl(&s.pool, &["--json", "lu", "remove", "other"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!({ "removed": "other" }));
    assert!(exported(&s.uri("other-config")));
    let out = sspctl(&s.pool, &["--json", "lu", "remove", "vm2"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["also_removed"], serde_json::json!(["vm2-config"]));
    assert!(!exported(&s.uri("vm2-config")));
    assert!(s.stop().success());
}

/// Requests and replies of sspctl versions from before --activation still decode, and a
/// request with an activation round-trips.
#[test]
fn admin_clone_request_without_activation_still_decodes() {
    let old: AdminRequest =
        serde_json::from_str(r#"{"cmd":"clone","src":"img@s","name":"vm1"}"#).unwrap();
    assert_eq!(
        old,
        AdminRequest::Clone {
            src: "img@s".into(),
            name: "vm1".into(),
            activation: None
        }
    );
    // A plain clone is sent exactly as before.
    assert_eq!(
        serde_json::to_string(&old).unwrap(),
        r#"{"cmd":"clone","src":"img@s","name":"vm1"}"#
    );
    let req = AdminRequest::Clone {
        src: "img@s".into(),
        name: "vm1".into(),
        activation: Some("hostname=vm1,ip=10.0.0.9/16,dns=10.0.0.1".parse().unwrap()),
    };
    let back: AdminRequest = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
    assert_eq!(back, req);
    let r: AdminReply = serde_json::from_str(r#"{"reply":"removed","name":"vm1"}"#).unwrap();
    assert!(matches!(r, AdminReply::Removed { also_removed, .. } if also_removed.is_empty()));
}
