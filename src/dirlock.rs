//! An exclusive lock on a directory (a `.lock` file held with `flock` for the life of the
//! process): one publisher per output directory, one `sync` per local copy. The kernel drops
//! it when the process dies, so a crash never leaves a stale lock.

use std::fs::{self, File};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Take the lock file `name` in `dir` (created if missing); `busy` says what holds it when
/// another process does. Keep the returned file open as long as the lock must hold.
pub fn lock(dir: &Path, name: &str, busy: impl FnOnce(&Path) -> String) -> Result<File> {
    let lock_path = dir.join(name);
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => bail!("{}", busy(&lock_path)),
        Err(fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", lock_path.display()))
        }
    }
}
