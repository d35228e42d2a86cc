// Records the installed libcommvq's directory as the program's run path, so
// Library::open_default() finds libcommvq.so.0 with no LD_LIBRARY_PATH (the
// rpath a C program gets from its build). The directory comes from
// pkg-config (PKG_CONFIG_PATH=PREFIX/lib/pkgconfig for a prefix of your own).
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let output = Command::new("pkg-config").args(["--variable=libdir", "commvq"]).output()
        .expect("pkg-config runs");
    assert!(output.status.success(), "pkg-config finds commvq.pc");
    let libdir = String::from_utf8(output.stdout).expect("UTF-8").trim().to_string();
    println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
}
