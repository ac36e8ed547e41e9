//! `lang-spec/recipes.md` runs as written: its kernel files and data are created in an empty
//! folder, and its shell blocks run against the `keopsc` binary built with these tests (see the
//! page's introduction for the rules). A block that fails, writes nothing, or leaves a NaN in an
//! array fails the test with its line in the page; a page with fewer blocks than recipes fails
//! too, so the test cannot pass by finding nothing to run.

use keops_runtime::HostArray;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn recipes_page() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lang-spec/recipes.md")
}

/// A fenced block: its info string, the page line of its first content line, and its text.
struct Block {
    info: String,
    line: usize,
    text: String,
}

/// The fenced blocks of a page, and the `## ` heading each falls under.
fn blocks(page: &str) -> Vec<(String, Block)> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut open: Option<Block> = None;
    for (k, line) in page.lines().enumerate() {
        match open.take() {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    open = Some(Block {
                        info: info.trim().to_string(),
                        line: k + 2,
                        text: String::new(),
                    });
                } else if let Some(h) = line.strip_prefix("## ") {
                    heading = h.trim().to_string();
                }
            }
            Some(mut block) => {
                if line.starts_with("```") {
                    out.push((heading.clone(), block));
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                    open = Some(block);
                }
            }
        }
    }
    out
}

/// The shape of `name(R, C)`, or with leading batch axes `name(B, R, C)`: two numbers or more.
fn shape(call: &str, name: &str) -> Option<Vec<usize>> {
    let inner = call.strip_prefix(name)?.trim().strip_prefix('(')?;
    let dims: Vec<usize> = inner
        .strip_suffix(')')?
        .split(',')
        .map(|d| d.trim().parse().ok())
        .collect::<Option<_>>()?;
    (dims.len() >= 2).then_some(dims)
}

/// One line of a `recipe-data` block: `NAME.npy = uniform(R, C)` (or `normal`, `zeros`,
/// `ones`, with batch axes `uniform(B, R, C)`, or `[v, ...]`), as a float32 array.
fn data_array(spec: &str, rng: &mut StdRng) -> Result<HostArray, String> {
    let spec = spec.trim();
    if let Some(list) = spec.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let values = list
            .split(',')
            .map(|v| v.trim().parse::<f32>().map_err(|e| format!("`{v}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(HostArray::from_f32(vec![values.len()], values));
    }
    for (name, draw) in [("uniform", 0u8), ("normal", 1), ("zeros", 2), ("ones", 3)] {
        if let Some(dims) = shape(spec, name) {
            let values = (0..dims.iter().product())
                .map(|_| match draw {
                    0 => rng.random::<f32>(),
                    1 => {
                        // Box-Muller: two uniforms give one standard normal value.
                        let (u, v): (f64, f64) = (rng.random(), rng.random());
                        ((-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
                    }
                    2 => 0.0,
                    _ => 1.0,
                })
                .collect();
            return Ok(HostArray::from_f32(dims, values));
        }
    }
    Err(format!(
        "`{spec}`: expected uniform(R, C), normal(R, C), zeros(R, C), ones(R, C) or [v, ...]"
    ))
}

fn npy_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("work folder readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".npy"))
        .collect()
}

/// Runs one shell block; returns its failure, if any.
fn run_shell(block: &Block, dir: &Path) -> Result<(), String> {
    let before = npy_files(dir);
    let binary = Path::new(env!("CARGO_BIN_EXE_keopsc"));
    let path = format!(
        "{}:{}",
        binary.parent().expect("the binary's folder").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&block.text)
        .current_dir(dir)
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{}\n{}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            block.text,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let after = npy_files(dir);
    if after.is_subset(&before) && after.len() == before.len() {
        return Err(format!("writes no new .npy file:\n{}", block.text));
    }
    for name in &after {
        let array = HostArray::read_npy(&dir.join(name)).map_err(|e| format!("`{name}`: {e}"))?;
        if array.to_f64().iter().any(|v| v.is_nan()) {
            return Err(format!("`{name}` holds NaN after:\n{}", block.text));
        }
    }
    Ok(())
}

#[test]
fn every_recipe_runs_as_written() {
    let page = std::fs::read_to_string(recipes_page()).expect("lang-spec/recipes.md readable");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut rng = StdRng::seed_from_u64(16);
    let mut failures = Vec::new();
    let mut shell_sections = BTreeSet::new();
    let mut kernel_files = 0;
    let all = blocks(&page);
    for (section, block) in &all {
        let at = format!("lang-spec/recipes.md:{}", block.line);
        if let Some(name) = block.info.strip_prefix("kf file=") {
            std::fs::write(dir.path().join(name.trim()), &block.text).expect("kernel written");
            kernel_files += 1;
        } else if block.info == "recipe-data" {
            for line in block.text.lines().filter(|l| !l.trim().is_empty()) {
                let result = line
                    .split_once('=')
                    .ok_or_else(|| format!("`{line}`: expected NAME.npy = ..."))
                    .and_then(|(name, spec)| {
                        let array = data_array(spec, &mut rng)?;
                        array
                            .write_npy(&dir.path().join(name.trim()))
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = result {
                    failures.push(format!("{at}: {e}"));
                }
            }
        } else if block.info == "sh" {
            shell_sections.insert(section.clone());
            if let Err(e) = run_shell(block, dir.path()) {
                failures.push(format!("{at}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Every recipe (each `## ` section) has commands, and they ran.
    let sections: BTreeSet<String> = all.iter().map(|(s, _)| s.clone()).collect();
    for section in &sections {
        assert!(
            shell_sections.contains(section),
            "recipe `{section}` has no ```sh block"
        );
    }
    assert!(
        shell_sections.len() >= 5 && kernel_files >= 5,
        "{} recipes with commands and {kernel_files} kernel files: the page lost its recipes",
        shell_sections.len()
    );
}

#[test]
fn recipe_data_is_what_the_page_says() {
    let mut rng = StdRng::seed_from_u64(1);
    let a = data_array("zeros(2, 3)", &mut rng).unwrap();
    assert_eq!(a.shape, vec![2, 3]);
    assert!(a.to_f64().iter().all(|&v| v == 0.0));
    let u = data_array("uniform(100, 2)", &mut rng).unwrap();
    assert!(u.to_f64().iter().all(|&v| (0.0..1.0).contains(&v)));
    let p = data_array("[0.5, 2]", &mut rng).unwrap();
    assert_eq!((p.shape.clone(), p.to_f64()), (vec![2], vec![0.5, 2.0]));
    assert!(data_array("gaussian(2, 2)", &mut rng).is_err());
}

/// `lang-spec/cli.md` says what the command line offers: every `keopsc NAME` it names is a
/// command of the binary, and what it lists as not built yet (if anything) is not an option of
/// the commands.
#[test]
fn cli_page_matches_the_binary() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../lang-spec/cli.md"))
            .expect("lang-spec/cli.md readable");
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keopsc"))
            .args(args)
            .output()
            .expect("keopsc runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let commands = help(&["--help"]);
    // What is not built yet, if anything, is listed under its own heading.
    let (built, planned) = page
        .split_once("## Not built yet")
        .unwrap_or((page.as_str(), ""));
    let mut named = BTreeSet::new();
    for piece in built.split("`keopsc ").skip(1) {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        named.insert(name);
    }
    assert!(named.len() >= 6, "{named:?}");
    for name in &named {
        assert!(
            commands
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} "))),
            "cli.md describes `keopsc {name}`, which is not a command:\n{commands}"
        );
    }
    let options = help(&["eval", "--help"]) + &help(&["vjp", "--help"]);
    // The planned options are the bold ones (`**`--same y=x`**`); others are today's workarounds.
    let mut planned_options = 0;
    for piece in planned.split("**`--").skip(1) {
        planned_options += 1;
        let option: String = piece
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        assert!(
            !options.contains(&format!("--{option} ")),
            "cli.md lists `--{option}` as not built yet, but the binary has it"
        );
    }
    assert!(
        planned.is_empty() || planned_options > 0,
        "cli.md's `## Not built yet` section names no option"
    );
}
