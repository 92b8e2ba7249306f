//! The admin token when `admin.token_file` is not set: a random one generated at start and
//! written to a file only this user can read, where the CLI finds it from the admin port.
//!
//! The file is `<dir>/statemirror-admin-<port>.token`, `<dir>` being
//! `$STATEMIRROR_RUNTIME_DIR` when set, else `/run/statemirror` (created mode 0700) when it
//! can be written, else the temporary directory (`$TMPDIR` or `/tmp`). The sidecar writes
//! it via a temporary file created exclusively with mode 0600 and a rename, and removes it
//! when it stops. The CLI looks in the same places, in the same order, for the port of its
//! `--admin` URL.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Overrides the directory of generated token files (sidecar and CLI alike).
pub const RUNTIME_DIR_ENV: &str = "STATEMIRROR_RUNTIME_DIR";
/// The preferred directory when [`RUNTIME_DIR_ENV`] is not set.
pub const RUN_DIR: &str = "/run/statemirror";

/// Bytes of randomness in a generated token (hex-encoded: 64 characters).
const TOKEN_BYTES: usize = 32;

/// A fresh random token: 32 bytes from the kernel's CSPRNG, hex-encoded.
pub fn generate() -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex(&buf))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn file_name(port: u16) -> String {
    format!("statemirror-admin-{port}.token")
}

/// The directories a generated token file may be in, in the order they are tried.
pub fn candidate_dirs() -> Vec<PathBuf> {
    match std::env::var_os(RUNTIME_DIR_ENV).filter(|d| !d.is_empty()) {
        Some(d) => vec![PathBuf::from(d)],
        None => vec![PathBuf::from(RUN_DIR), std::env::temp_dir()],
    }
}

/// Writes `token` as the generated token file of admin port `port`; returns its path. The
/// first candidate directory that works is used.
pub fn write_generated(port: u16, token: &str) -> std::io::Result<PathBuf> {
    let mut last = std::io::Error::other("no directory for the admin token file");
    for dir in candidate_dirs() {
        match write_in(&dir, port, token) {
            Ok(p) => return Ok(p),
            Err(e) => {
                last = std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
            }
        }
    }
    Err(last)
}

fn write_in(dir: &Path, port: u16, token: &str) -> std::io::Result<PathBuf> {
    if !dir.is_dir() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir)?;
    }
    let path = dir.join(file_name(port));
    // A name nobody else can have prepared: pid and random suffix, created exclusively.
    let tmp = dir.join(format!(
        ".{}.{}.{}",
        file_name(port),
        std::process::id(),
        &generate()?[..8]
    ));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let written = o.open(&tmp).and_then(|mut f| {
        f.write_all(format!("{token}\n").as_bytes())?;
        f.sync_all()
    });
    let r = written.and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(path)
}

/// The port of an admin URL (`http://host:port`, `https://[::1]:port`); 80/443 when absent.
pub fn url_port(admin_url: &str) -> Option<u16> {
    let (rest, default) = if let Some(r) = admin_url.strip_prefix("http://") {
        (r, 80)
    } else if let Some(r) = admin_url.strip_prefix("https://") {
        (r, 443)
    } else {
        (admin_url, 80)
    };
    let authority = rest.split('/').next().unwrap_or("");
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority.rsplit_once(':').map_or("", |(_, p)| p),
    };
    let port = after_host.trim_start_matches(':');
    if port.is_empty() {
        return Some(default);
    }
    port.parse().ok()
}

/// The generated token file of the sidecar whose admin API is `admin_url`, if there is one.
pub fn discover(admin_url: &str) -> Option<PathBuf> {
    let name = file_name(url_port(admin_url)?);
    candidate_dirs()
        .into_iter()
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
}

/// The token of the generated file of `admin_url` (see [`discover`]), if readable.
pub fn discover_token(admin_url: &str) -> Option<String> {
    crate::config::read_secret(&discover(admin_url)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn ports_of_admin_urls() {
        assert_eq!(url_port("http://127.0.0.1:9480"), Some(9480));
        assert_eq!(url_port("http://localhost:1/"), Some(1));
        assert_eq!(url_port("http://[::1]:9481"), Some(9481));
        assert_eq!(url_port("http://[::1]"), Some(80));
        assert_eq!(url_port("https://admin.example"), Some(443));
        assert_eq!(url_port("http://h:x"), None);
    }

    #[cfg(unix)]
    #[test]
    fn generated_file_is_private_and_replaced_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let p = write_in(&dir, 1, "aaa").unwrap();
        let p2 = write_in(&dir, 1, "bbb").unwrap();
        assert_eq!(p, p2);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "bbb\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("sm-token-test-{}", generate().unwrap()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
