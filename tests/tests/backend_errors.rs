//! Asking for a backend this kernel lacks is a clear error and a non-zero exit, not a silent
//! fallback. Only meaningful where the kernel has no kprobes (this project's CI host).

use std::process::Command;

use lab::{require_root, tracer::pathtrace_bin};

#[test]
fn kprobe_backend_without_kprobes_names_the_missing_feature() {
    require_root().expect("root");
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        eprintln!("this kernel has kprobes: the VM lab covers the kprobe backend");
        return;
    }
    let out = Command::new(pathtrace_bin().expect("binary"))
        .args(["--backend", "kprobe", "--duration", "1"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kprobe backend is not available"), "{err}");
    assert!(err.contains("CONFIG_KPROBES"), "{err}");
}

#[test]
fn invalid_filter_is_rejected_before_anything_loads() {
    let out = Command::new(pathtrace_bin().expect("binary"))
        .args(["--dport", "http"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dport"));
}
