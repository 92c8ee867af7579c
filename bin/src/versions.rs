//! The state directory's configuration versions: files written and read here, what they mean
//! decided by core (`config::versions`).

use std::path::{Path, PathBuf};

use ringway_core::config::versions::{self, Version};

/// `DIR/versions`.
fn dir(state: &Path) -> PathBuf {
    state.join("versions")
}

/// The file asking the running process to roll back (its content: the version number).
pub fn rollback_request(state: &Path) -> PathBuf {
    state.join("rollback")
}

/// Every version kept, oldest first.
pub fn list(state: &Path) -> std::io::Result<Vec<Version>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir(state)) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        if versions::number_of(&name.to_string_lossy()).is_none() {
            continue;
        }
        if let Some((v, _)) = std::fs::read_to_string(e.path())
            .ok()
            .as_deref()
            .and_then(Version::parse)
        {
            out.push(v);
        }
    }
    out.sort_by_key(|v| v.number);
    Ok(out)
}

/// Version `n` and its configuration text.
pub fn read(state: &Path, n: u64) -> Result<(Version, String), String> {
    let path = dir(state).join(versions::file_name(n));
    let file = std::fs::read_to_string(&path)
        .map_err(|e| format!("version {n}: cannot read {}: {e}", path.display()))?;
    let (v, text) = Version::parse(&file)
        .ok_or_else(|| format!("{}: not a ringway config version", path.display()))?;
    Ok((v.clone(), text.to_string()))
}

/// Keeps `text` (read from `source`, applied `how`) as the next version, unless it is the
/// text of the newest one already (a restart or a reload of the same file); prunes to `keep`.
/// Returns the version now running.
pub fn record(
    state: &Path,
    text: &str,
    source: &str,
    how: &str,
    keep: usize,
) -> std::io::Result<Version> {
    let d = dir(state);
    std::fs::create_dir_all(&d)?;
    let have = list(state)?;
    let sha256 = versions::hash(text);
    if let Some(last) = have.last() {
        if last.sha256 == sha256 && !how.starts_with("rollback") {
            return Ok(last.clone());
        }
    }
    let v = Version {
        number: have.last().map_or(1, |l| l.number + 1),
        sha256,
        applied: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        source: source.to_string(),
        how: how.to_string(),
    };
    // Written whole, then renamed: a crash leaves the old set or the new, never half a file.
    let path = d.join(versions::file_name(v.number));
    let tmp = path.with_extension("toml.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(v.file(text).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    let numbers: Vec<u64> = have.iter().map(|x| x.number).chain([v.number]).collect();
    for n in versions::prune(&numbers, keep, v.number) {
        let _ = std::fs::remove_file(d.join(versions::file_name(n)));
    }
    Ok(v)
}
