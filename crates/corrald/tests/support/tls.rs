//! A test certificate authority and a server certificate it signed (openssl), for the tests
//! that serve images over HTTPS.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CA's certificate, the server's certificate and its key, in one directory.
pub struct TestTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes, in `dir`, a CA and a certificate for the address `ip` signed by it, with the
/// extended key usages `usage` (e.g. `serverAuth`, or `serverAuth,clientAuth` for a daemon
/// that also presents it as a client).
pub fn test_ca_and_certificate(dir: &Path, ip: &str, usage: &str) -> TestTls {
    std::fs::create_dir_all(dir).unwrap();
    let p = |n: &str| dir.join(n).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca_subject = ["-days", "2", "-subj", "/CN=corral test CA"];
    let ca_files = ["-keyout", &p("ca.key"), "-out", &p("ca.pem")];
    openssl(&[&["req", "-x509"][..], &ec, &ca_subject, &ca_files].concat());
    let subject = format!("/CN={ip}");
    let req = ["-subj", &subject, "-keyout", &p("key.pem"), "-out", &p("req.csr")];
    openssl(&[&["req"][..], &ec, &req].concat());
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage={usage}\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("req.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("cert.pem"),
    ]);
    TestTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}
