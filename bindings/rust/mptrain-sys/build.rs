//! Finds the installed libmptrain by asking `pkg-config` (PKG_CONFIG names another program;
//! PKG_CONFIG_PATH points it at a prefix that is not a system one) and tells cargo how to
//! link it. The declarations in src/lib.rs are those of header version 0.1, so the
//! library must be 0.1.x: before 1.0 a minor release may change the ABI.

use std::env;
use std::process::Command;

const MODULE: &str = "mptrain";
const ABI_SERIES: &str = "0.1.";

fn pkg_config(args: &[&str]) -> Result<String, String> {
    let program = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let output = Command::new(&program)
        .args(args)
        .arg(MODULE)
        .output()
        .map_err(|e| format!("cannot run `{}`: {}", program, e))?;
    if !output.status.success() {
        return Err(format!(
            "`{} {} {}` failed: {}",
            program,
            args.join(" "),
            MODULE,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout)
        .map(|s| s.trim().to_string())
        .map_err(|_| format!("`{} {}` printed text that is not UTF-8", program, args.join(" ")))
}

fn find() -> Result<(), String> {
    let version = pkg_config(&["--modversion"])?;
    if !version.starts_with(ABI_SERIES) {
        return Err(format!("found mptrain {} but these declarations are for {}x", version, ABI_SERIES));
    }
    for flag in pkg_config(&["--libs"])?.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={}", dir);
            println!("cargo:libdir={}", dir);
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={}", lib);
        } else {
            println!("cargo:warning=mptrain.pc: ignoring link flag {}", flag);
        }
    }
    for flag in pkg_config(&["--cflags-only-I"])?.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-I") {
            println!("cargo:include={}", dir);
        }
    }
    println!("cargo:version={}", version);
    Ok(())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    if let Err(message) = find() {
        eprintln!(
            "mptrain-sys: {}\nInstall mptrain (cmake --install BUILD --prefix PREFIX) and set \
             PKG_CONFIG_PATH=PREFIX/lib/pkgconfig.",
            message
        );
        std::process::exit(1);
    }
}
