//! The last known instances on disk, so a gateway can start while etcd is down.
//! Written atomically (temporary file, fsync, rename): a crash mid-write leaves
//! the previous snapshot, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::discovery::Instance;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The etcd revision the instances were known at (informational: a
    /// gateway started from a snapshot re-lists etcd rather than resuming).
    pub revision: u64,
    pub instances: Vec<Instance>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a snapshot: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
}

pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io { path: path.into(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Format { path: path.into(), source })
}

pub fn write(path: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.into(), source };
    let bytes = serde_json::to_vec(snapshot).map_err(|source| SnapshotError::Format { path: path.into(), source })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.json");
        assert!(matches!(read(&path), Err(SnapshotError::Io { .. })));
        let inst =
            Instance { service: "a".into(), id: "1".into(), addr: "127.0.0.1:1".into(), metadata: Default::default() };
        let one = Snapshot { revision: 7, instances: vec![inst.clone()] };
        write(&path, &one).unwrap();
        assert_eq!(read(&path).unwrap(), one);
        let two = Snapshot { revision: 9, instances: vec![] };
        write(&path, &two).unwrap();
        assert_eq!(read(&path).unwrap(), two);
        assert!(!dir.path().join("snap.json.tmp").exists());
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Format { .. })));
    }
}
