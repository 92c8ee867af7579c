//! The cache's mechanism: the box's table and one shard per worker (kept across reloads),
//! purges from the admin listener and fill ends from other workers ([`Mail`]), and the vectored
//! write of a hit (its head from the exchange, its body from the store, in one `writev`).

use std::sync::Arc;

use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;
use ringway_core::cache::Entry;

use crate::deadline::IoFail;
use crate::deadline::Limit;
use crate::splice::Pipes;
use crate::sys::{self, HitBuf, Mapping};

/// What reaches a worker from outside its thread (with a byte on its wake socket).
pub(crate) enum Mail {
    /// From the admin listener.
    Purge(Purge),
    /// A fill another worker ran has ended: requests waiting here for the key look again.
    FillEnded(Box<[u8]>),
}

/// A purge the admin listener asks of every worker; each replies with how many stored
/// responses it removed.
pub(crate) struct Purge {
    /// A cache key (absolute URI), a prefix of keys, or a tag.
    pub(crate) target: Vec<u8>,
    pub(crate) what: PurgeBy,
    /// Marked stale instead of removed.
    pub(crate) soft: bool,
    pub(crate) reply: crossbeam_channel::Sender<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PurgeBy {
    Url,
    Prefix,
    Tag,
}

/// The stored bytes a hit sends: `range` of the entry's body, as stored or in `coding`.
#[derive(Clone)]
pub(crate) struct Hit {
    pub(crate) entry: Arc<Entry>,
    pub(crate) coding: Option<ringway_core::compress::Coding>,
    pub(crate) range: std::ops::Range<usize>,
}

impl Hit {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.entry.bytes(self.coding)[self.range.clone()]
    }

    /// The mapping its bytes are in, when they are in pages of their own (the stored body or
    /// an encoded copy, pages.rs) and enough of them to be worth sending by reference.
    pub(crate) fn mapping(&self) -> Option<&Mapping> {
        if self.range.len() < crate::pages::MIN {
            return None;
        }
        crate::pages::mapping(self.entry.body_for(self.coding))
    }
}

/// How [`splice_hit`] ended.
pub(crate) enum Spliced {
    Sent,
    /// The kernel refused the first move (nothing reached the socket): write it instead.
    Unsupported,
    Failed,
}

/// Writes `head` then `range` of the body in `m` on a non-blocking plain socket without copying
/// the body (pages.rs): the head is written into a pipe, the body's pages are put behind it by
/// reference, and the pipe is spliced into the socket, a pipe's worth at a time. Each wait for
/// room in the socket may last `write`.
pub(crate) async fn splice_hit(
    s: &TcpStream,
    head: &[u8],
    m: &Mapping,
    range: std::ops::Range<usize>,
    pipes: &Pipes,
    write: std::time::Duration,
) -> Spliced {
    let Ok(pipe) = pipes.take() else {
        return Spliced::Unsupported;
    };
    let waits = crate::splice::Fixed { read: write, write };
    let (mut h, mut b) = (0, range.start);
    let mut sent = false;
    while h < head.len() || b < range.end {
        let mut held = 0;
        loop {
            let r = if h < head.len() {
                sys::write(pipe.w(), &head[h..]).inspect(|n| h += n)
            } else if b < range.end {
                sys::vmsplice(pipe.w(), m, b..range.end).inspect(|n| b += n)
            } else {
                break;
            };
            match r {
                Ok(0) => break,
                Ok(n) => held += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if !sent => {
                    log::debug!("hit by reference refused, written instead: {e}");
                    return Spliced::Unsupported;
                }
                Err(_) => return Spliced::Failed,
            }
        }
        if held == 0 {
            return Spliced::Failed;
        }
        sent = true;
        if crate::splice::drain(&pipe, s, held, &waits).await.is_err() {
            return Spliced::Failed;
        }
    }
    pipes.give(pipe);
    Spliced::Sent
}

/// Writes `head` then the body of `entry` on a plain socket, in as few `writev`s as the socket
/// takes; `head` comes back (emptied of nothing) for reuse.
pub(crate) async fn write_hit(
    s: &mut TcpStream,
    head: &mut Vec<u8>,
    hit: Hit,
    limit: impl Limit,
) -> Result<(), IoFail> {
    let total = head.len() + hit.range.len();
    let mut off = 0;
    let mut h = std::mem::take(head);
    while off < total {
        let buf = HitBuf::new(h, hit.clone(), off);
        let (res, buf) = limit.run(s.writev(buf)).await?;
        h = buf.into_head();
        match res {
            Ok(0) => {
                *head = h;
                return Err(IoFail::Io(std::io::ErrorKind::WriteZero.into()));
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                *head = h;
                return Err(IoFail::Io(e));
            }
        }
    }
    *head = h;
    Ok(())
}

/// Decodes `%XX` escapes (and leaves anything else as it is).
pub(crate) fn percent_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if v[i] == b'%' && i + 2 < v.len() {
            if let (Some(h), Some(l)) = (hex(v[i + 1]), hex(v[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode(b"http%3A%2F%2Fa%2Fb%3Fc%3d1%zz%"),
            b"http://a/b?c=1%zz%"
        );
    }
}
