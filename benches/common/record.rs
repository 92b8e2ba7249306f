//! What a benchmark run leaves behind: a markdown file under `benches/results/` with the date,
//! the machine and the versions, and the tables the run printed; and the per-process CPU
//! counters (`/proc/<pid>/stat`) the tables divide by requests.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The markdown a run prints, kept to be written to its results file at the end.
pub struct Record {
    text: String,
}

impl Record {
    /// Starts with a title and the run's context: date, machine, statemirror's commit.
    pub fn new(title: &str) -> Self {
        let mut r = Record {
            text: String::new(),
        };
        r.line(&format!("# {title}\n"));
        r.line(&format!("- date: {} UTC", utc_now()));
        r.line(&format!("- machine: {}", machine()));
        r.line(&format!(
            "- statemirror {} ({}), release build",
            env!("CARGO_PKG_VERSION"),
            git_revision()
        ));
        r
    }

    /// Prints `s` and keeps it.
    pub fn line(&mut self, s: &str) {
        println!("{s}");
        self.text.push_str(s);
        self.text.push('\n');
    }

    /// A markdown table: header cells, then rows.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let mut t = format!("| {} |\n|", header.join(" | "));
        for h in header {
            // Numbers right-aligned: a header naming a unit or a ratio is a number column.
            let numeric = h.contains("/s")
                || h.contains("µs")
                || h.contains("KiB")
                || h.contains("ratio")
                || h.starts_with('×');
            t.push_str(if numeric { "---:|" } else { "---|" });
        }
        for r in rows {
            let _ = write!(t, "\n| {} |", r.join(" | "));
        }
        self.line(&t);
    }

    /// Writes `benches/results/<stem>-<date>[-<BENCH_LABEL>].md`; returns its path.
    pub fn save(&self, stem: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches")
            .join("results");
        let _ = fs::create_dir_all(&dir);
        let date = utc_now().chars().take(10).collect::<String>();
        let label = std::env::var("BENCH_LABEL")
            .ok()
            .filter(|l| !l.is_empty())
            .map_or(String::new(), |l| format!("-{l}"));
        let path = dir.join(format!("{stem}-{date}{label}.md"));
        fs::write(&path, &self.text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("\nresults written to {}", path.display());
        path
    }
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `2026-11-30 18:40`.
pub fn utc_now() -> String {
    output("date", &["-u", "+%Y-%m-%d %H:%M"])
}

/// `git describe`-like: the commit of the checkout the benchmark was built from, `-dirty`
/// when it has uncommitted changes.
pub fn git_revision() -> String {
    let rev = output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    match (rev.is_empty(), dirty) {
        (true, _) => "unknown commit".into(),
        (false, true) => format!("{rev}-dirty"),
        (false, false) => rev,
    }
}

/// `2 CPUs (nproc), Intel(R) Xeon(R) Processor, Linux 6.1.0, 7.8 GiB`.
pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!(
        "{} CPUs (nproc), {model}, Linux {}, {mem_gib:.1} GiB RAM, load average at start {}",
        output("nproc", &[]),
        output("uname", &["-r"]),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks() -> f64 {
    output("getconf", &["CLK_TCK"]).parse().unwrap_or(100.0)
}

/// CPU time a process used so far, all its threads (utime + stime of `/proc/<pid>/stat`), in
/// clock ticks; 0 when it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after `) state`.
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}
