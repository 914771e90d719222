//! Helpers shared by the raft tests (`raft_storage.rs`, `raft_cluster.rs`,
//! `raft_faults.rs`, `raft_served.rs`, `raft_random.rs`, `turns.rs`,
//! `tls.rs`); not every
//! test uses every helper.
#![allow(dead_code)]

pub mod cluster;
pub mod served;
pub mod slow_link;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tashkent_certifier::proto::Writeset;
use tashkent_certifier::raft::Command;
use tashkent_certifier::writeset::item;
use tashkent_certifier::{record, Op, WRITESET_FORMAT_VERSION};

/// A certifier record (version 0): transaction `id` with `snapshot`
/// updates row `key` of table `accounts`.
pub fn record(id: &str, snapshot: u64, key: &str) -> Bytes {
    let ws = Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::copy_from_slice(id.as_bytes()),
        origin: 1,
        snapshot,
        items: vec![item("accounts", Op::Update, key.as_bytes().to_vec())],
        ..Writeset::default()
    };
    record::encode(&ws).freeze()
}

/// The `Certify` command of [`record`]`(id, snapshot, key)`.
pub fn certify(id: &str, snapshot: u64, key: &str) -> Command {
    Command::Certify {
        record: record(id, snapshot, key),
    }
}

/// A self-signed certificate for `names` in `dir` as `<stem>.crt` and
/// `<stem>.key`.
pub fn certificate(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// A raft log's meta file (`raft-meta`, in the raft directory `dir`) whose
/// next write hangs as on a frozen disk: its temporary file is a FIFO,
/// which a write opens and blocks in until someone reads it. Dropped, it
/// opens the FIFO for reading without blocking, so a write blocked there
/// goes on (and fails to sync a FIFO: the meta file is not replaced),
/// whether the test passed or failed; then removes the FIFO.
pub struct HungMetaWrite(PathBuf);

impl HungMetaWrite {
    pub fn under(dir: &Path) -> HungMetaWrite {
        let fifo = dir.join("raft-meta.tmp");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        HungMetaWrite(fifo)
    }
}

impl Drop for HungMetaWrite {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&self.0);
        // The writer needs its reader until it has written.
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(reader);
        let _ = std::fs::remove_file(&self.0);
    }
}
