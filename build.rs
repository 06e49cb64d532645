//! Build script: compiles every `bpf/*.bpf.c` into a CO-RE object and a libbpf-rs skeleton in OUT_DIR
//! for the target arch (x86_64 or aarch64), and links the static musl x86_64 build's memcpy
//! (src/memcpy.rs).

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let bpf_dir = manifest.join("bpf");
    let vmlinux_dir = bpf_dir.join("vmlinux").join(&arch);
    if !vmlinux_dir.join("vmlinux.h").exists() {
        panic!(
            "no vendored vmlinux.h for target arch `{arch}` in {}: run scripts/gen-vmlinux on a machine of that arch",
            vmlinux_dir.display()
        );
    }

    // The arch the BPF programs are built for: the kernel's name for it (bpf_tracing.h's
    // __TARGET_ARCH_* and bpf/sensor.bpf.c's compat hook).
    let target_arch_define = match arch.as_str() {
        "x86_64" => "-D__TARGET_ARCH_x86",
        "aarch64" => "-D__TARGET_ARCH_arm64",
        other => panic!(
            "target arch `{other}` is not supported: the BPF programs know x86_64 and aarch64 \
             (bpf/sensor.bpf.c's compat hook, bpf/vmlinux/<arch>/)"
        ),
    };

    let mut sources: Vec<PathBuf> = fs::read_dir(&bpf_dir)
        .expect("bpf/ exists in the source tree")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();

    for src in &sources {
        let file = src
            .file_name()
            .and_then(OsStr::to_str)
            .expect("bpf source names are UTF-8");
        let name = file.trim_end_matches(".bpf.c");
        let skel = out.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(src)
            .clang_args([
                // libbpf-cargo derives this from CARGO_CFG_TARGET_ARCH too; said here because
                // the sources' arch guards (bpf_tracing.h, the compat hook) depend on it.
                OsStr::new(target_arch_define),
                OsStr::new("-I"),
                vmlinux_dir.as_os_str(),
                OsStr::new("-I"),
                bpf_dir.as_os_str(),
                OsStr::new("-Wall"),
                OsStr::new("-Werror"),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| {
                panic!("failed to build BPF skeleton for {}: {e:#}", src.display())
            });
    }

    // Optimized static musl x86_64 builds copy memory with src/memcpy.rs instead of musl's
    // memcpy (see there for why). Unoptimized builds keep musl's: there a fixed-size copy in
    // the replacement may itself become a memcpy call. aarch64 keeps musl's memcpy: an
    // assembly routine (src/string/aarch64/memcpy.S) copying 16-byte register pairs, without
    // the x86 string instructions memcpy.rs works around.
    let musl = env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl");
    let optimized = env::var("OPT_LEVEL").is_ok_and(|o| o != "0");
    if musl && arch == "x86_64" && optimized {
        println!("cargo:rustc-link-arg-bin=linuxguard-agent=-Wl,--wrap=memcpy");
    }

    // Rebuild when anything under bpf/ changes (sources, the shared header, vmlinux).
    println!("cargo:rerun-if-changed=bpf");
    for entry in walk(&bpf_dir) {
        println!("cargo:rerun-if-changed={}", entry.display());
    }
}

fn walk(dir: &PathBuf) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if matches!(p.extension().and_then(OsStr::to_str), Some("c" | "h")) {
                out.push(p);
            }
        }
    }
    out
}
