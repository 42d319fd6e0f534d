//! Directory entries that survive a power cut. A new file's data is durable after its own
//! `fsync`, but its name only once the directory holding it is synced too; a power cut otherwise
//! takes the whole file with it (the power-loss drill, `tests/tests/power_loss.rs`, showed the
//! audit log vanishing that way). Every file or directory the node creates and must find again
//! after a restart goes through here: the store's and the audit trail's directories, audit
//! segments and checkpoints, the CRLs an admin pushes. It sits at the bottom of the layers, beside
//! `fault`, so every layer may use it.

use std::io;
use std::path::Path;

/// Makes the entries of `dir` durable (`fsync` on the directory).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, syncing each parent whose entries changed.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Made by someone else meanwhile: its parent's sync is theirs, but cheap to repeat.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Opens `path` for appending, creating it if needed; a new file's name is made durable at once.
pub fn open_append(path: &Path) -> io::Result<std::fs::File> {
    let existed = path.exists();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if !existed && let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories_and_files_that_exist_afterwards() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a").join("b").join("c");
        create_dir_all(&dir).expect("create");
        assert!(dir.is_dir());
        create_dir_all(&dir).expect("again is fine");
        let mut f = open_append(&dir.join("x.log")).expect("open");
        std::io::Write::write_all(&mut f, b"line\n").expect("write");
        drop(f);
        let mut f = open_append(&dir.join("x.log")).expect("reopen appends");
        std::io::Write::write_all(&mut f, b"more\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(dir.join("x.log")).expect("read"),
            "line\nmore\n"
        );
        sync_dir(&dir).expect("sync");
    }
}
