//! Project tasks that need more than cargo: `cargo xtask build-bpf [--check]`.
//!
//! `build-bpf` compiles `bpf/ebpf` with the nightly toolchain for `bpfel-unknown-none` and
//! writes the object to `bpf/bpfsight.bpf.o`, which is committed so that a stable
//! `cargo build` needs no BPF toolchain. `--check` builds into a scratch directory and fails
//! if the committed object differs (CI runs it).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

const OBJECT: &str = "bpf/bpfsight.bpf.o";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build-bpf") => build_bpf(args.iter().any(|a| a == "--check")),
        _ => {
            eprintln!("usage: cargo xtask build-bpf [--check]");
            std::process::exit(2);
        }
    }
}

/// The workspace being built. `cargo run` sets CARGO_MANIFEST_DIR at run time too; prefer it to
/// the compile-time path, because clones sharing one CARGO_TARGET_DIR (CI's cache) share one
/// xtask binary, built for whichever clone came first.
fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir.parent().expect("xtask lives in the workspace").to_path_buf()
}

fn build_bpf(check: bool) -> Result<()> {
    let root = root();
    let crate_dir = root.join("bpf/ebpf");
    // A fixed target dir outside the crate keeps the build independent of CARGO_TARGET_DIR.
    let target_dir =
        std::env::var_os("BPF_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target/bpf"));
    // Paths would otherwise leak into the object (panic locations) and make it differ by checkout.
    // v3 for atomic swaps and 32-bit atomic adds (the socket counts user space takes while the
    // programs add to them); kernels have run v3 programs since 5.1.
    let remap = format!(
        "-C target-cpu=v3 --remap-path-prefix={}=/bpfsight --remap-path-prefix={}=/cargo",
        root.display(),
        home::cargo_home().display()
    );
    let status = Command::new("cargo")
        .current_dir(&crate_dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", remap.replace(' ', "\u{1f}"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "+nightly",
            "build",
            "--locked",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .status()
        .context("running cargo +nightly (is the nightly toolchain installed? see scripts/setup.sh --bpf)")?;
    if !status.success() {
        bail!("building bpf/ebpf failed (needs nightly, rust-src and bpf-linker: scripts/setup.sh --bpf)");
    }
    let built = target_dir.join("bpfel-unknown-none/release/bpfsight");
    let fresh = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // An outlined Rust function keeps its mangled name (`_RNv...Cs<crate hash>...`), and the
    // crate hash depends on where the checkout is: the object would differ between clones.
    if let Some(at) = fresh.windows(4).position(|w| w == b"_RNv" || w == b"_RNC") {
        let name: String =
            fresh[at..].iter().take_while(|b| b.is_ascii_graphic()).map(|&b| b as char).take(120).collect();
        bail!(
            "the BPF object has an outlined Rust function `{name}`: its mangled name depends on the checkout path, so \
             the committed object would not reproduce elsewhere; mark the function (or the closure's caller chain) \
             #[inline(always)], or write the closure's body inline"
        );
    }
    let committed_path = root.join(OBJECT);
    if check {
        let committed = std::fs::read(&committed_path).with_context(|| format!("reading {OBJECT}"))?;
        if committed != fresh {
            bail!(
                "{OBJECT} is stale: it differs from a fresh build of bpf/ebpf ({} vs {} bytes); run `cargo xtask build-bpf` and commit it",
                committed.len(),
                fresh.len()
            );
        }
        println!("{OBJECT} matches a fresh build ({} bytes)", fresh.len());
    } else {
        std::fs::write(&committed_path, &fresh).with_context(|| format!("writing {OBJECT}"))?;
        println!("wrote {OBJECT} ({} bytes)", fresh.len());
    }
    Ok(())
}

mod home {
    use std::path::PathBuf;

    /// `$CARGO_HOME`, else `~/.cargo`.
    pub fn cargo_home() -> PathBuf {
        std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"))
    }
}
