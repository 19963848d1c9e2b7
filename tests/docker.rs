//! The Docker path, without a Docker engine: the Dockerfile's build stage copies every path the
//! crate reads at compile time, and the model-install script it shares with `infra/dev.sh` installs
//! and checks the local model in an empty directory.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The sources of the `COPY` lines of the Dockerfile's `build` stage, relative to the context.
fn copied_in_build_stage() -> Vec<String> {
    let dockerfile = fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let mut in_build = false;
    let mut sources = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        if let Some(from) = line.strip_prefix("FROM ") {
            in_build = from.ends_with(" AS build");
            continue;
        }
        if in_build && let Some(args) = line.strip_prefix("COPY ") {
            let parts: Vec<&str> = args.split_whitespace().filter(|p| !p.starts_with("--")).collect();
            // every argument but the destination is a source
            sources.extend(parts[..parts.len() - 1].iter().map(|s| s.trim_end_matches('/').to_owned()));
        }
    }
    assert!(!sources.is_empty(), "no COPY in the build stage");
    sources
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every path the crate reads while it compiles: `include_bytes!`/`include_str!` targets (relative
/// to their file), `sqlx::migrate!` directories (relative to the manifest), and the manifest.
fn read_at_compile_time() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut paths = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    if root.join("build.rs").exists() {
        paths.push(root.join("build.rs"));
    }
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (macro_name, base) in [
            ("include_bytes!(\"", file.parent().unwrap()),
            ("include_str!(\"", file.parent().unwrap()),
            ("migrate!(\"", root),
        ] {
            let mut rest = text.as_str();
            while let Some(at) = rest.find(macro_name) {
                rest = &rest[at + macro_name.len()..];
                let end = rest.find('"').unwrap();
                paths.push(base.join(&rest[..end]));
                rest = &rest[end..];
            }
        }
    }
    paths
}

#[test]
fn the_build_stage_copies_everything_the_crate_reads_while_it_compiles() {
    let copied = copied_in_build_stage();
    let root = Path::new(ROOT).canonicalize().unwrap();
    let needed = read_at_compile_time();
    assert!(needed.iter().any(|p| p.ends_with("migrations")), "the migrations are read at compile time");
    assert!(needed.len() > 4, "{needed:?}");
    for path in needed {
        let path = path.canonicalize().unwrap_or_else(|_| panic!("{} does not exist", path.display()));
        let relative = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        assert!(
            copied.iter().any(|c| relative == *c || relative.starts_with(&format!("{c}/"))),
            "{relative} is read at compile time but the Dockerfile's build stage does not copy it ({copied:?})"
        );
    }
    // and nothing keeps it out of the build context
    if let Ok(ignore) = fs::read_to_string(root.join(".dockerignore")) {
        for pattern in ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            assert!(!copied.iter().any(|c| c.starts_with(pattern.trim_end_matches('/'))), "{pattern} is ignored");
        }
    }
}

#[test]
fn the_shared_script_installs_and_checks_the_model_in_an_empty_directory() {
    let dockerfile = fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let dev = fs::read_to_string(Path::new(ROOT).join("infra/dev.sh")).unwrap();
    assert!(dockerfile.contains("install-model.sh") && dev.contains("install-model.sh"), "one script for both");

    let dest = std::env::temp_dir().join(format!("docuchat-model-{}", uuid::Uuid::new_v4()));
    let run = || Command::new("sh").arg(Path::new(ROOT).join("infra/install-model.sh")).arg(&dest).output().unwrap();
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["config.json", "tokenizer.json", "model.safetensors", ".complete"] {
        assert!(dest.join(file).is_file(), "{file} missing");
    }
    let weights = fs::read(dest.join("model.safetensors")).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&weights)),
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    );
    // a second run keeps what is there
    assert!(run().status.success());
    // a model it does not know is refused before anything is fetched
    let other = std::env::temp_dir().join(format!("docuchat-model-{}", uuid::Uuid::new_v4()));
    let out = Command::new("sh")
        .arg(Path::new(ROOT).join("infra/install-model.sh"))
        .arg(&other)
        .arg("bert-base-uncased")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model"));
    assert!(!other.exists());
    let _ = fs::remove_dir_all(&dest);
}
