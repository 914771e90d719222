//! Helpers shared by the raft tests (`raft_storage.rs`, `raft_cluster.rs`,
//! `raft_faults.rs`); not every test uses every helper.
#![allow(dead_code)]

pub mod cluster;

use bytes::Bytes;
use tashkent_certifier::proto::Writeset;
use tashkent_certifier::raft::Command;
use tashkent_certifier::writeset::item;
use tashkent_certifier::{record, Op, WRITESET_FORMAT_VERSION};

/// A `Certify` command: transaction `id` with `snapshot` updates row `key`
/// of table `accounts`.
pub fn certify(id: &str, snapshot: u64, key: &str) -> Command {
    let ws = Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::copy_from_slice(id.as_bytes()),
        origin: 1,
        snapshot,
        items: vec![item("accounts", Op::Update, key.as_bytes().to_vec())],
        ..Writeset::default()
    };
    Command::Certify {
        record: record::encode(&ws).freeze(),
    }
}
