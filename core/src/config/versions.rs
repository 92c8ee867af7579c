//! Configuration versions: every configuration applied (at start, by a reload, by a rollback)
//! is kept as a numbered file whose first lines say what it is, and two of them can be
//! compared the way a reload sees them ([`diff`]). Reading and writing the files is the
//! caller's; this module decides their names, their header, which to prune and what changed.

use std::collections::BTreeMap;

use sha2::Digest;

use super::{Action, Config};

/// What is known of one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub number: u64,
    /// SHA-256 of the configuration text, hex.
    pub sha256: String,
    /// When it was applied, seconds since the Unix epoch.
    pub applied: u64,
    /// The file it was read from (relative paths in it are relative to that file's directory).
    pub source: String,
    /// `start`, `reload`, or `rollback to N`.
    pub how: String,
}

/// Versions kept unless `server.versions` says otherwise.
pub const DEFAULT_VERSIONS_KEPT: usize = 10;

/// The file name of version `n`: `000042.toml`, so that names sort as numbers.
pub fn file_name(n: u64) -> String {
    format!("{n:06}.toml")
}

/// The version number of a file name written by [`file_name`].
pub fn number_of(file_name: &str) -> Option<u64> {
    let n = file_name.strip_suffix(".toml")?;
    (n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// SHA-256 of `text`, hex.
pub fn hash(text: &str) -> String {
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

const MAGIC: &str = "# ringway config version ";

impl Version {
    /// The file: a header of comments, then the configuration text as it was applied. The
    /// file is itself a valid configuration (the header is comments).
    pub fn file(&self, text: &str) -> String {
        format!(
            "{MAGIC}{}\n# sha256 {}\n# applied {} ({})\n# source {}\n{text}",
            self.number,
            self.sha256,
            self.applied,
            self.how.replace('\n', " "),
            self.source.replace('\n', " "),
        )
    }

    /// Reads a file written by [`Version::file`]: the version and the configuration text.
    pub fn parse(file: &str) -> Option<(Self, &str)> {
        let mut rest = file;
        let mut line = || {
            let (l, r) = rest.split_once('\n')?;
            rest = r;
            Some(l)
        };
        let number = line()?.strip_prefix(MAGIC)?.parse().ok()?;
        let sha256 = line()?.strip_prefix("# sha256 ")?.to_string();
        let (applied, how) = line()?.strip_prefix("# applied ")?.split_once(' ')?;
        let applied = applied.parse().ok()?;
        let how = how.strip_prefix('(')?.strip_suffix(')')?.to_string();
        let source = line()?.strip_prefix("# source ")?.to_string();
        Some((
            Self {
                number,
                sha256,
                applied,
                source,
                how,
            },
            rest,
        ))
    }
}

/// Of the version numbers `have`, those to delete so that the newest `keep` remain (always the
/// newest one, `current`, whatever `keep`).
pub fn prune(have: &[u64], keep: usize, current: u64) -> Vec<u64> {
    let mut v: Vec<u64> = have.to_vec();
    v.sort_unstable();
    let cut = v.len().saturating_sub(keep.max(1));
    v[..cut].iter().copied().filter(|&n| n != current).collect()
}

/// What changes when `to` replaces `from`, in the reload's terms: one line per change, empty
/// when nothing does.
pub fn diff(from: &Config, to: &Config) -> Vec<String> {
    let mut out = Vec::new();
    // Restart-only settings first: a reload reports them and keeps the old ones.
    let addrs = |c: &Config| -> Vec<String> {
        c.server.listen.iter().map(|l| l.describe(l.addr)).collect()
    };
    if addrs(from) != addrs(to) {
        out.push(format!(
            "server.listen: {} → {} (takes effect after a restart)",
            addrs(from).join(", "),
            addrs(to).join(", ")
        ));
    }
    let (a, b) = (&from.server, &to.server);
    if (
        a.workers,
        &a.cpus,
        a.pin,
        a.io_uring,
        a.multishot_accept,
        a.recv_ring,
        a.recv_ring_buffers,
    ) != (
        b.workers,
        &b.cpus,
        b.pin,
        b.io_uring,
        b.multishot_accept,
        b.recv_ring,
        b.recv_ring_buffers,
    ) {
        out.push(
            "server.workers, cpus, pin, io_uring, multishot_accept, recv_ring or recv_ring_buffers changed (takes effect after a restart)"
                .into(),
        );
    }
    if from.admin != to.admin {
        out.push(format!(
            "admin.listen: {:?} → {:?} (takes effect after a restart)",
            from.admin, to.admin
        ));
    }
    // Upstream groups, by name.
    fn groups(c: &Config) -> BTreeMap<String, &super::Upstream> {
        c.upstreams.iter().map(|u| (u.name.clone(), u)).collect()
    }
    let (ga, gb) = (groups(from), groups(to));
    for (name, u) in &ga {
        match gb.get(name) {
            None => out.push(format!("upstream {name}: removed")),
            Some(v) if u != v => {
                let servers = |u: &super::Upstream| -> Vec<String> {
                    u.servers
                        .iter()
                        .map(|s| s.addr.to_string())
                        .chain(
                            u.named
                                .iter()
                                .map(|n| format!("{}:{}", n.host, n.server.addr.port())),
                        )
                        .collect()
                };
                let (sa, sb) = (servers(u), servers(v));
                let added: Vec<_> = sb.iter().filter(|s| !sa.contains(s)).collect();
                let removed: Vec<_> = sa.iter().filter(|s| !sb.contains(s)).collect();
                for s in added {
                    out.push(format!("upstream {name}: server {s} added"));
                }
                for s in removed {
                    out.push(format!("upstream {name}: server {s} removed (drained)"));
                }
                let mut same_servers = (*u).clone();
                same_servers.servers.clone_from(&v.servers);
                same_servers.named.clone_from(&v.named);
                if &same_servers != *v || (sa == sb && u.servers != v.servers) {
                    out.push(format!("upstream {name}: settings changed"));
                }
            }
            Some(_) => {}
        }
    }
    for name in gb.keys().filter(|n| !ga.contains_key(*n)) {
        out.push(format!("upstream {name}: added"));
    }
    // Routes, by host and path.
    let routes = |c: &Config| -> BTreeMap<String, (String, String)> {
        c.routes
            .iter()
            .map(|r| {
                let what = match &r.action {
                    Action::Proxy { upstream, .. } => {
                        format!("→ {}", c.upstreams[*upstream].name)
                    }
                    Action::Respond(f) => format!("respond {}", f.status),
                };
                (r.name.clone(), (what, format!("{r:?}")))
            })
            .collect()
    };
    let (ra, rb) = (routes(from), routes(to));
    for (name, (what, full)) in &ra {
        match rb.get(name) {
            None => out.push(format!("route {name}: removed")),
            Some((w, f)) if w != what => out.push(format!("route {name}: {what} now {w}")),
            Some((_, f)) if f != full => out.push(format!("route {name}: settings changed")),
            Some(_) => {}
        }
    }
    for (name, (what, _)) in rb.iter().filter(|(n, _)| !ra.contains_key(*n)) {
        out.push(format!("route {name}: added ({what})"));
    }
    // Whole sections.
    let sections: [(&str, bool); 9] = [
        ("timeouts", from.timeouts != to.timeouts),
        ("limits", from.limits != to.limits),
        ("tls", from.tls != to.tls),
        ("forward", from.forward != to.forward),
        ("cache", from.cache != to.cache),
        ("access_log", from.access_log != to.access_log),
        ("resolver", from.resolver != to.resolver),
        (
            "server.shutdown_timeout",
            a.shutdown_timeout != b.shutdown_timeout,
        ),
        (
            "server paths (merge_slashes, encoded_slashes)",
            a.path != b.path,
        ),
    ];
    for (name, changed) in sections {
        if changed {
            out.push(format!("{name}: changed"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_name_and_describe_themselves() {
        assert_eq!(file_name(42), "000042.toml");
        assert_eq!(number_of("000042.toml"), Some(42));
        assert_eq!(number_of("42.toml"), None);
        assert_eq!(number_of("000042.toml.tmp"), None);
        let v = Version {
            number: 3,
            sha256: hash("a = 1\n"),
            applied: 1_796_300_000,
            source: "/etc/ringway/ringway.toml".into(),
            how: "rollback to 1".into(),
        };
        let f = v.file("a = 1\n");
        assert!(f.starts_with("# ringway config version 3\n# sha256 "));
        let (back, text) = Version::parse(&f).unwrap();
        assert_eq!(back, v);
        assert_eq!(text, "a = 1\n");
        assert!(Version::parse("a = 1\n").is_none());
    }

    #[test]
    fn pruning_keeps_the_newest() {
        assert_eq!(prune(&[5, 1, 3, 4, 2], 3, 5), vec![1, 2]);
        assert_eq!(prune(&[1, 2], 10, 2), Vec::<u64>::new());
        assert_eq!(prune(&[1, 2, 3], 0, 3), vec![1, 2]);
        // After a rollback the current one may be older than others; it stays.
        assert_eq!(prune(&[1, 2, 3], 1, 1), vec![2]);
    }

    #[test]
    fn diff_speaks_the_reloads_language() {
        let a = Config::parse(
            "a.toml",
            "[upstreams.app]\nservers = [\"127.0.0.1:9000\", \"127.0.0.1:9001\"]\n\
             [[routes]]\nupstream = \"app\"\n[[routes]]\npath = \"/old/\"\nupstream = \"app\"\n",
        )
        .unwrap();
        let b = Config::parse(
            "b.toml",
            "[server]\nlisten = [\"127.0.0.1:8081\"]\n[timeouts]\nkeepalive = \"5s\"\n\
             [upstreams.app]\nservers = [\"127.0.0.1:9000\", \"app.internal:9002\"]\n\
             [upstreams.api]\nservers = [\"127.0.0.1:7000\"]\n\
             [[routes]]\nupstream = \"api\"\n[[routes]]\npath = \"/new/\"\nupstream = \"app\"\n",
        )
        .unwrap();
        let d = diff(&a, &b);
        assert_eq!(
            d,
            [
                "server.listen: 127.0.0.1:8080 → 127.0.0.1:8081 (takes effect after a restart)",
                "upstream app: server app.internal:9002 added",
                "upstream app: server 127.0.0.1:9001 removed (drained)",
                "upstream api: added",
                "route /: → app now → api",
                "route /old/: removed",
                "route /new/: added (→ app)",
                "timeouts: changed",
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }
}
