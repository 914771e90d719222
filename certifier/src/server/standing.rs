//! When a raft node stands for election.
//!
//! A node campaigns (raft's own elections, openraft's `elect`) only while
//! it could serve as leader at once. Not while its votes are held after
//! it lost its raft state (`rejoin`): standing is a vote for itself. And
//! not while its versions log fills the gap an installed snapshot left
//! (`raft::gap`): its state machine applies nothing until the copy ends,
//! so as leader it would answer no certification for that long, while a
//! peer could lead at once. It still votes for others, so it never keeps
//! the group from electing a leader. A leader handing over asks such a
//! node in vain (`raft::transfer`): it says it may not stand.

use tokio::sync::watch;
use tokio::time::Instant;

use crate::raft::Raft;
use crate::Version;

/// Keeps `raft`'s elections off while votes are held (until `held_until`)
/// or a gap is pending (`gap`), on otherwise, and says which in
/// `may_stand`; ends when the versions log that sends `gap` is gone.
/// Until `quiet_until` its own elections are off too, but it may stand
/// when a leader hands over to it.
pub(super) async fn guard(
    raft: Raft,
    mut gap: watch::Receiver<Option<Version>>,
    held_until: Option<Instant>,
    quiet_until: Option<Instant>,
    may_stand: watch::Sender<bool>,
) {
    loop {
        let now = Instant::now();
        let held = held_until.filter(|until| now < *until);
        let quiet = quiet_until.filter(|until| now < *until);
        let filling = gap.borrow_and_update().is_some();
        let may = held.is_none() && !filling;
        raft.runtime_config().elect(may && quiet.is_none());
        may_stand.send_replace(may);
        // The earlier end: each changes what is decided above.
        let wake = [held, quiet].into_iter().flatten().min();
        tokio::select! {
            changed = gap.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
        }
    }
}
