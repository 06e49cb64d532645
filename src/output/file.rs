//! The rotating file output (`--output file`): JSON lines appended to `--file-path` (mode 0600,
//! its directory created 0700 if missing); past `--file-max-mb` the file is renamed to
//! `<path>.1` (the older ones shifted to `.2` ... up to `--file-keep`, the oldest removed) and a
//! new one is created. Rotation happens only between lines, and a failed write is cut back to
//! the last whole line, so no line is ever split or lost across a rotation; a reader that
//! follows the file by name (`tail -F`, a log shipper) reads the renamed file to its end, then
//! the new one. fsync at each rotation and at shutdown.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Context, Error, Kind, Result};
use crate::output::queue::Batch;
use crate::output::{Deliver, Outcome};

/// `--file-path`, `--file-max-mb`, `--file-keep`.
#[derive(Debug, Clone)]
pub struct Options {
    pub path: PathBuf,
    /// Rotate before a write would take the file past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`<path>.1` is the newest).
    pub keep: u32,
}

/// The open file and its size.
pub struct FileOut {
    opts: Options,
    file: Option<File>,
    /// Bytes in the current file (whole lines only).
    size: u64,
    /// The current file's inode, to notice a file moved away by someone else.
    ino: u64,
    rotations: u64,
}

impl FileOut {
    /// Creates the directory if missing and opens the file for appending, at start-up, so a
    /// path that cannot be written fails the start before the sensor loads.
    pub fn open(opts: Options) -> Result<FileOut> {
        let mut out = FileOut {
            opts,
            file: None,
            size: 0,
            ino: 0,
            rotations: 0,
        };
        let shown = out.opts.path.display().to_string();
        if out.opts.path.is_dir() {
            return Err(Error::config(format!(
                "--file-path `{shown}` is a directory; name the file events go to, e.g. \
                 {shown}/events.jsonl"
            )));
        }
        if let Some(dir) = out.dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(Kind::Runtime, || {
                    format!("failed to create the directory of --file-path `{shown}`")
                })?;
        }
        out.reopen().with_context(Kind::Runtime, || {
            format!("failed to open --file-path `{shown}`")
        })?;
        log::info!(
            "output file: JSON lines to `{shown}` ({} bytes so far), rotated at {} MiB, {} \
             rotated files kept",
            out.size,
            out.opts.max_bytes >> 20,
            out.opts.keep
        );
        Ok(out)
    }

    fn dir(&self) -> Option<PathBuf> {
        self.opts
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
    }

    /// Opens (or creates) the file at the path, 0600, for appending.
    fn reopen(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
            .open(&self.opts.path)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        if meta.mode() & 0o777 != 0o600 {
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        self.size = meta.len();
        self.ino = meta.ino();
        self.file = Some(f);
        Ok(())
    }

    /// `<path>.<n>`.
    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.opts.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// Renames the current file to `.1` (shifting the older ones, removing the oldest) and
    /// creates a new one. The old file is fsync'ed first: a reader of `.1` finds it complete.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some(f) = &self.file {
            f.sync_all()?;
        }
        for n in (1..self.opts.keep).rev() {
            match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.opts.path, self.rotated(1))?;
        self.file = None;
        self.reopen()?;
        self.sync_dir();
        self.rotations += 1;
        log::debug!(
            "output file: rotated `{}` ({} rotations)",
            self.opts.path.display(),
            self.rotations
        );
        Ok(())
    }

    /// Makes the renames durable (best effort).
    fn sync_dir(&self) {
        let dir = self.dir().unwrap_or_else(|| PathBuf::from("."));
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }

    /// Reopens the path when the file was moved or removed by someone else (an external
    /// logrotate): we never write into a file nobody can find.
    fn check_path(&mut self) -> io::Result<()> {
        let moved = match fs::symlink_metadata(&self.opts.path) {
            Ok(m) => m.ino() != self.ino,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        if moved || self.file.is_none() {
            if self.file.is_some() {
                log::warn!(
                    "output file: `{}` was moved or removed by another program; writing to a new file there",
                    self.opts.path.display()
                );
            }
            self.file = None;
            self.reopen()?;
        }
        Ok(())
    }

    /// Appends `bytes` (whole lines); on failure the file is cut back to its previous length,
    /// so it never ends in part of a line.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("the file is not open"));
        };
        match f.write_all(bytes) {
            Ok(()) => {
                self.size += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(t) = f.set_len(self.size) {
                    log::warn!(
                        "output file: could not cut `{}` back to its last whole line after a \
                         failed write: {t}",
                        self.opts.path.display()
                    );
                }
                Err(e)
            }
        }
    }

    /// Writes the batch, rotating between lines whenever the next line would take the file
    /// past the limit. Returns how many events were written before an error.
    fn write_batch(&mut self, b: &Batch) -> (usize, io::Result<()>) {
        if let Err(e) = self.check_path() {
            return (0, Err(e));
        }
        let body = &b.body[..];
        let (mut written, mut start, mut pos, mut lines) = (0, 0, 0, 0);
        for line in body.split_inclusive(|c| *c == b'\n').take(b.events) {
            let chunk = (pos - start) as u64;
            let full = self.size + chunk + line.len() as u64 > self.opts.max_bytes;
            if full && self.size + chunk > 0 {
                if let Err(e) = self.append(&body[start..pos]) {
                    return (written, Err(e));
                }
                written += lines;
                (start, lines) = (pos, 0);
                if let Err(e) = self.rotate() {
                    return (written, Err(e));
                }
            }
            pos += line.len();
            lines += 1;
        }
        if let Err(e) = self.append(&body[start..pos]) {
            return (written, Err(e));
        }
        (written + lines, Ok(()))
    }
}

impl Deliver for FileOut {
    fn batched(&self) -> bool {
        false
    }

    fn deliver(&mut self, b: &Batch, _timeout: Duration) -> Outcome {
        match self.write_batch(b) {
            (_, Ok(())) => Outcome::Done { rejected: 0 },
            (delivered, Err(e)) => Outcome::Retry {
                delivered,
                rejected: 0,
                why: format!("failed to write `{}`: {e}", self.opts.path.display()),
                after: None,
            },
        }
    }

    fn finish(&mut self) {
        if let Some(f) = &self.file {
            match f.sync_all() {
                Ok(()) => log::info!(
                    "output file: `{}` synced to disk ({} rotations)",
                    self.opts.path.display(),
                    self.rotations
                ),
                Err(e) => log::warn!(
                    "output file: fsync of `{}` failed: {e}",
                    self.opts.path.display()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::queue::{Limits, Queue};
    use std::sync::Arc;
    use std::time::Instant;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lg-file-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn batch(from: usize, n: usize) -> Batch {
        let mut q = Queue::new(
            Limits {
                queue_bytes: 1 << 20,
                batch_events: n,
                batch_bytes: 1 << 20,
                batch_age: Duration::ZERO,
            },
            "k".into(),
        );
        for i in from..from + n {
            q.push(
                Arc::from(format!("{{\"n\":{i:04}}}").as_bytes()),
                Instant::now(),
            );
        }
        q.take_batch(Instant::now(), true).unwrap()
    }

    #[test]
    fn rotates_between_lines_keeps_n_files_and_loses_nothing_kept() {
        let d = dir("rotate");
        let opts = Options {
            path: d.join("sub/events.jsonl"),
            // 11 bytes a line: 5 lines a file.
            max_bytes: 55,
            keep: 2,
        };
        let mut f = FileOut::open(opts.clone()).unwrap();
        assert_eq!(
            fs::metadata(d.join("sub")).unwrap().mode() & 0o777,
            0o700,
            "directory created 0700"
        );
        assert_eq!(
            f.deliver(&batch(0, 7), Duration::ZERO),
            Outcome::Done { rejected: 0 }
        );
        assert_eq!(
            f.deliver(&batch(7, 8), Duration::ZERO),
            Outcome::Done { rejected: 0 }
        );
        f.finish();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(f.rotated(2)).lines().count(), 5);
        assert_eq!(read(f.rotated(1)).lines().count(), 5);
        let cur = read(opts.path.clone());
        assert_eq!(cur.lines().count(), 5);
        assert!(cur.ends_with("{\"n\":0014}\n"));
        assert!(!f.rotated(3).exists(), "only --file-keep rotated files");
        for p in [opts.path.clone(), f.rotated(1), f.rotated(2)] {
            assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600, "{p:?}");
        }
        // All 15 lines, in order, across the files kept.
        let all = [read(f.rotated(2)), read(f.rotated(1)), cur].concat();
        let want: String = (0..15).map(|i| format!("{{\"n\":{i:04}}}\n")).collect();
        assert_eq!(all, want);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_moved_away_is_reopened_and_a_directory_is_refused() {
        let d = dir("moved");
        let path = d.join("events.jsonl");
        let mut f = FileOut::open(Options {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 1,
        })
        .unwrap();
        f.deliver(&batch(0, 1), Duration::ZERO);
        fs::rename(&path, d.join("elsewhere")).unwrap();
        f.deliver(&batch(1, 1), Duration::ZERO);
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"n\":0001}\n");
        let e = FileOut::open(Options {
            path: d.clone(),
            max_bytes: 1,
            keep: 1,
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_write_leaves_whole_lines_and_is_retried_from_there() {
        // /dev/full fails every write with ENOSPC: nothing counts as written.
        let mut f = FileOut {
            opts: Options {
                path: PathBuf::from("/dev/full"),
                max_bytes: 1 << 20,
                keep: 1,
            },
            file: Some(OpenOptions::new().append(true).open("/dev/full").unwrap()),
            size: 0,
            ino: 0,
            rotations: 0,
        };
        f.ino = fs::metadata("/dev/full").unwrap().ino();
        match f.deliver(&batch(0, 3), Duration::ZERO) {
            Outcome::Retry { delivered, why, .. } => {
                assert_eq!(delivered, 0);
                assert!(why.contains("/dev/full"), "{why}");
            }
            o => panic!("{o:?}"),
        }
    }
}
