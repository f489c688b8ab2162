//! The state directory: which database a run uses, the lock that keeps one daemon per
//! database, and the checks a database passes before the daemon trusts it.
//!
//! Layout of `global.state_dir`:
//! * `state.db` — the live state (rule instances, incidents, events, outbox);
//! * `dry-run.db` — what `herald run --dry-run` records, so a rehearsal never marks the live
//!   state as "already paged";
//! * `state.lock` / `dry-run.lock` — held (an OS file lock, released even on `kill -9`) by the
//!   daemon using the matching database; holds its pid, so a second daemon is refused with a
//!   message naming the first.
//!
//! At start a database that exists but is empty (0 bytes) or fails `PRAGMA quick_check` is
//! refused: starting from nothing would re-open incidents and page again. With
//! `--fresh-state` such a database is moved aside (renamed, never deleted) and an empty one is
//! created; a healthy database is always kept. A new database is built under a temporary name
//! and renamed into place once it has its schema, so a crash during creation never leaves an
//! empty `state.db` behind.
//!
//! Blocking file I/O; call it before the async runtime serves anything.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::store::{Store, StoreError};

/// Which database of the state directory a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Database {
    /// `state.db`: the live state.
    Live,
    /// `dry-run.db`: the state of `--dry-run` runs.
    DryRun,
}

impl Database {
    /// The database for a run.
    pub fn for_run(dry_run: bool) -> Database {
        if dry_run {
            Database::DryRun
        } else {
            Database::Live
        }
    }
    /// The database file's name.
    pub fn file_name(self) -> &'static str {
        match self {
            Database::Live => "state.db",
            Database::DryRun => "dry-run.db",
        }
    }
    /// The lock file's name.
    pub fn lock_name(self) -> &'static str {
        match self {
            Database::Live => "state.lock",
            Database::DryRun => "dry-run.lock",
        }
    }
}

/// Why the state could not be opened. Every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot use state directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("state directory {dir} is in use by another herald (pid {pid}, lock file {lock}); stop it first, or give this one another global.state_dir")]
    InUse { dir: PathBuf, pid: String, lock: PathBuf },
    #[error("state database {path} is {problem}; refusing to start, because starting without the state would re-open incidents and page again. Restore it from a backup, or start with --fresh-state to move it aside and begin with an empty state")]
    Unusable { path: PathBuf, problem: String },
    #[error("state database {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("cannot move {path} aside: {source}")]
    MoveAside { path: PathBuf, source: std::io::Error },
}

/// An exclusive lock on one database of a state directory; released on drop and when the
/// process dies, however it dies.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock of `db` in `dir`, writing our pid into the lock file; refuses with the
    /// holder's pid when another process has it.
    pub fn acquire(dir: &Path, db: Database) -> Result<StateLock, StateDirError> {
        std::fs::create_dir_all(dir).map_err(|source| StateDirError::Dir { path: dir.to_path_buf(), source })?;
        let path = dir.join(db.lock_name());
        let lock_err = |source| StateDirError::Lock { path: path.clone(), source };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let pid = if pid.is_empty() { "unknown".to_string() } else { pid.to_string() };
                return Err(StateDirError::InUse { dir: dir.to_path_buf(), pid, lock: path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        file.sync_all().map_err(lock_err)?;
        Ok(StateLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An opened, checked state database with its lock.
pub struct OpenedState {
    pub store: Store,
    pub lock: StateLock,
    /// The database file.
    pub path: PathBuf,
    /// Where an unusable database was moved by `--fresh-state`.
    pub moved_aside: Option<PathBuf>,
}

impl std::fmt::Debug for OpenedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedState").field("path", &self.path).field("lock", &self.lock).field("moved_aside", &self.moved_aside).finish_non_exhaustive()
    }
}

/// Locks and opens the database `db` of `dir` (creating it when it does not exist), refusing
/// an empty or corrupt one unless `fresh_state` is set (see the module doc).
pub fn open(dir: &Path, db: Database, fresh_state: bool) -> Result<OpenedState, StateDirError> {
    let lock = StateLock::acquire(dir, db)?;
    let path = dir.join(db.file_name());
    let mut moved_aside = None;
    if path.exists() {
        if let Err(problem) = check(&path) {
            if !fresh_state {
                return Err(problem);
            }
            let aside = move_aside(&path)?;
            tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %problem, "--fresh-state: moved the unusable state database aside; starting with an empty state");
            moved_aside = Some(aside);
        }
    }
    if !path.exists() {
        create(&path)?;
    }
    let store = Store::open(&path).map_err(|source| StateDirError::Store { path: path.clone(), source })?;
    Ok(OpenedState { store, lock, path, moved_aside })
}

/// Whether an existing database file can be trusted: not empty, a SQLite file, and passing
/// `PRAGMA quick_check`.
fn check(path: &Path) -> Result<(), StateDirError> {
    let unusable = |problem: String| StateDirError::Unusable { path: path.to_path_buf(), problem };
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let wal_len = std::fs::metadata(sidecar(path, "-wal")).map(|m| m.len()).unwrap_or(0);
    // A database created by an older Herald may sit in its write-ahead log until the first
    // checkpoint; only a file with nothing anywhere is empty.
    if len == 0 && wal_len == 0 {
        return Err(unusable("empty (0 bytes)".into()));
    }
    match Store::quick_check(path) {
        Ok(problems) if problems.is_empty() => Ok(()),
        Ok(problems) => Err(unusable(format!("corrupt (PRAGMA quick_check: {})", problems.join("; ")))),
        Err(e) => Err(unusable(format!("not a readable Herald database ({e})"))),
    }
}

/// `path` with a suffix appended to its file name (`state.db-wal`).
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Renames the database and its WAL and shared-memory files to `<name>.broken-<unix time>`.
fn move_aside(path: &Path) -> Result<PathBuf, StateDirError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let aside = sidecar(path, &format!(".broken-{stamp}"));
    for suffix in ["", "-wal", "-shm"] {
        let from = sidecar(path, suffix);
        if from.exists() {
            std::fs::rename(&from, sidecar(&aside, suffix)).map_err(|source| StateDirError::MoveAside { path: from.clone(), source })?;
        }
    }
    Ok(aside)
}

/// Creates a database with its schema under a temporary name, then renames it into place.
fn create(path: &Path) -> Result<(), StateDirError> {
    let tmp = sidecar(path, ".new");
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(sidecar(&tmp, suffix));
    }
    let store_err = |source| StateDirError::Store { path: path.to_path_buf(), source };
    // Dropping the store checkpoints the log into the file and removes it.
    drop(Store::open(&tmp).map_err(store_err)?);
    std::fs::rename(&tmp, path).map_err(|source| StateDirError::Dir { path: path.to_path_buf(), source })?;
    if let Some(dir) = path.parent() {
        // Make the rename durable.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path(), Database::Live).unwrap();
        let e = StateLock::acquire(dir.path(), Database::Live).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("pid {}", std::process::id())) && msg.contains("state.lock"), "{msg}");
        // The dry-run database has its own lock.
        let dry = StateLock::acquire(dir.path(), Database::DryRun).unwrap();
        drop(held);
        drop(dry);
        StateLock::acquire(dir.path(), Database::Live).expect("released on drop");
    }

    #[test]
    fn new_databases_are_created_whole_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open(dir.path(), Database::Live, false).unwrap();
        assert!(std::fs::metadata(&opened.path).unwrap().len() > 0, "never an empty file");
        assert!(!dir.path().join("state.db.new").exists());
        drop(opened);
        let again = open(dir.path(), Database::Live, false).unwrap();
        assert!(again.moved_aside.is_none());
    }

    #[test]
    fn empty_and_corrupt_databases_are_refused_unless_fresh_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        std::fs::write(&db, "").unwrap();
        let e = open(dir.path(), Database::Live, false).unwrap_err().to_string();
        assert!(e.contains(&db.display().to_string()) && e.contains("empty (0 bytes)") && e.contains("--fresh-state"), "{e}");
        std::fs::write(&db, "this is not a database, it is a text file that is long enough to have a header").unwrap();
        let e = open(dir.path(), Database::Live, false).unwrap_err().to_string();
        assert!(e.contains("not a readable Herald database"), "{e}");

        let opened = open(dir.path(), Database::Live, true).unwrap();
        let aside = opened.moved_aside.clone().unwrap();
        assert!(std::fs::read_to_string(&aside).unwrap().starts_with("this is not a database"), "kept, not deleted");
        assert!(opened.store.load_state().unwrap().incidents.is_empty());
        drop(opened);
        let opened = open(dir.path(), Database::Live, true).unwrap();
        assert!(opened.moved_aside.is_none(), "--fresh-state keeps a healthy database");
    }
}
