//! Asking for a backend this kernel lacks is a clear error and a non-zero exit, not a silent
//! fallback: every function backend the kernel refuses is asked for and must say why.

use std::process::Command;

use lab::{require_root, tracer::pathtrace_bin};

/// What the kernel lacks for each backend, as the error must name it.
const MISSING: [(&str, &str); 2] = [
    ("kprobe", "CONFIG_KPROBES"),
    ("fentry", "refuses fentry/fexit programs"),
];

#[test]
fn a_backend_the_kernel_lacks_names_the_missing_feature() {
    require_root().expect("root");
    let mut refused = 0;
    for (backend, why) in MISSING {
        // A filter on a port nothing uses: where the backend works, a second of nothing.
        let out = Command::new(pathtrace_bin().expect("binary"))
            .args(["--backend", backend, "--duration", "1", "--dport", "9"])
            .output()
            .expect("runs");
        if out.status.success() {
            continue; // the kernel has it: the VM lab covers it
        }
        refused += 1;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "the {backend} backend is not available on this kernel"
            )),
            "{err}"
        );
        assert!(err.contains(why), "{err}");
    }
    if refused == 0 {
        lab::skip(
            "a_backend_the_kernel_lacks_names_the_missing_feature",
            "this kernel has kprobes and fentry: no backend to refuse",
        );
    }
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
