//! One writer per folder: an advisory lock file, `DIR/.diffuse.lock`, taken with `flock`
//! (exclusive, non-blocking) and holding the holder's pid, host, start time and command. A
//! second writer is refused with one line naming the holder. The OS releases a `flock` when its
//! process dies, so a lock left by a dead process is simply taken; the file still names the
//! dead holder, and [`FolderLock::taken_over`] says whose lock was taken over. The file is never
//! deleted (deleting a lock file races with a writer that has opened it); a clean release
//! empties it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the locked folder.
pub const LOCK_FILE: &str = ".diffuse.lock";

/// Who holds (or held) a folder's lock, as its lock file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// Unix seconds when the lock was taken.
    pub since: u64,
    /// The command that took it (`diffuse train`).
    pub command: String,
}

impl Holder {
    fn current(command: &str) -> Holder {
        Holder {
            pid: std::process::id(),
            host: hostname(),
            since: unix_now(),
            command: command.to_string(),
        }
    }

    fn to_text(&self) -> String {
        format!(
            "pid={}\nhost={}\nsince={}\ncommand={}\n",
            self.pid, self.host, self.since, self.command
        )
    }

    /// The holder a lock file's text names; `None` for an empty or unreadable file.
    pub fn parse(text: &str) -> Option<Holder> {
        let mut h = Holder {
            pid: 0,
            host: String::new(),
            since: 0,
            command: String::new(),
        };
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            match k {
                "pid" => h.pid = v.parse().ok()?,
                "host" => h.host = v.to_string(),
                "since" => h.since = v.parse().ok()?,
                "command" => h.command = v.to_string(),
                _ => {}
            }
        }
        (h.pid != 0).then_some(h)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cmd = if self.command.is_empty() {
            "a diffuse command"
        } else {
            &self.command
        };
        write!(
            f,
            "`{cmd}` (pid {} on {}, since {})",
            self.pid,
            self.host,
            utc(self.since)
        )
    }
}

/// Why a folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error("{} is in use by {}: wait for it to finish or stop it, or write to another folder", dir.display(), holder.as_ref().map_or_else(|| "another diffuse process".to_string(), |h| h.to_string()))]
    Held {
        dir: PathBuf,
        holder: Option<Holder>,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A held folder lock; released (and its file emptied) when dropped, or by the OS when the
/// process dies.
#[derive(Debug)]
pub struct FolderLock {
    file: File,
    path: PathBuf,
    taken_over: Option<Holder>,
}

impl FolderLock {
    /// Locks `dir` (created if absent) for `command`, or says who holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<FolderLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if !try_lock(&file).map_err(io)? {
            // The holder writes its name right after locking: give it a moment.
            let mut holder = read_holder(&mut file);
            for _ in 0..20 {
                if holder.is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                holder = read_holder(&mut file);
            }
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        let taken_over = read_holder(&mut file);
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(Holder::current(command).to_text().as_bytes())?;
            file.sync_all()
        };
        write(&mut file).map_err(io)?;
        Ok(FolderLock {
            file,
            path,
            taken_over,
        })
    }

    /// The holder named by a lock file this lock replaced: a process that ended without
    /// releasing it (killed, crashed). `None` after a clean release.
    pub fn taken_over(&self) -> Option<&Holder> {
        self.taken_over.as_ref()
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Still holding the lock: empty the file so that the next holder sees a clean release;
        // closing the file releases the lock.
        let _ = self.file.set_len(0);
    }
}

/// The holder `dir`'s lock file names, if any (whether or not its process still runs).
pub fn holder_of(dir: &Path) -> Option<Holder> {
    Holder::parse(&std::fs::read_to_string(dir.join(LOCK_FILE)).ok()?)
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    Holder::parse(&text)
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock on a file descriptor this `File` owns for the call's duration.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Without `flock` (not Unix) the lock is only the file naming its holder.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer outlives the call and its length is passed.
        let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if r == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let h = String::from_utf8_lossy(&buf[..end]).trim().to_string();
            if !h.is_empty() {
                return h;
            }
        }
    }
    "localhost".to_string()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD hh:mm:ss UTC` of Unix seconds (the civil-from-days algorithm).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_767_225_599), "2025-12-31 23:59:59 UTC");
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path(), "diffuse train").unwrap();
        assert!(first.taken_over().is_none());
        // flock conflicts between two open files even within one process.
        let err = FolderLock::acquire(dir.path(), "diffuse train").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id()))
                && msg.contains("`diffuse train`")
                && msg.contains(" UTC")
                && !msg.contains('\n'),
            "{msg}"
        );
        match err {
            LockError::Held {
                holder: Some(h), ..
            } => assert_eq!(h.host, hostname()),
            e => panic!("{e}"),
        }
        drop(first);
        // A clean release: the next holder takes it without a takeover.
        let again = FolderLock::acquire(dir.path(), "diffuse data encode").unwrap();
        assert!(again.taken_over().is_none());
        assert_eq!(
            holder_of(dir.path()).unwrap().command,
            "diffuse data encode"
        );
    }

    #[test]
    fn a_dead_holders_lock_is_taken_over_and_named() {
        let dir = tempfile::tempdir().unwrap();
        // What a killed process leaves: its name in the file and no flock.
        let dead = Holder {
            pid: 999_999,
            host: "gone-host".into(),
            since: 1_700_000_000,
            command: "diffuse train".into(),
        };
        std::fs::write(dir.path().join(LOCK_FILE), dead.to_text()).unwrap();
        let lock = FolderLock::acquire(dir.path(), "diffuse train").unwrap();
        assert_eq!(lock.taken_over(), Some(&dead));
        assert_eq!(holder_of(dir.path()).unwrap().pid, std::process::id());
        assert!(dead.to_string().contains("2023-11-14 22:13:20 UTC"));
    }
}
