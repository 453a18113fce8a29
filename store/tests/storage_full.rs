//! A log that runs out of room: the map size setting, and what the store and openraft do
//! when a write fails.

mod support;

use openraft::storage::RaftLogStorageExt;
use starling_store::StoreOptions;
use support::{entry, tiny_log_options, TestResult};

/// Goal: the log's LMDB map size is a setting, and it bounds what the log can hold.
/// Method: append 1 MiB of entries (in 4 KiB entries, 16 per append) to a store opened with a
/// 256 KiB log map, and to one opened with the default options; only the first fails.
#[tokio::test]
async fn map_size_setting_bounds_the_log() -> TestResult {
    let root = tempfile::tempdir()?;
    tracing::info!("--- a 256 KiB log map cannot hold 1 MiB");
    let (mut small, _) =
        starling_store::open_with(&root.path().join("small"), &tiny_log_options())?;
    let mut refused = None;
    for first in (0..256).step_by(16) {
        let appended = small
            .blocking_append((first..first + 16).map(|index| entry(index, 4096)))
            .await;
        if let Err(error) = appended {
            refused = Some(error);
            break;
        }
    }
    assert!(refused.is_some(), "1 MiB fit in a 256 KiB map");

    tracing::info!("--- the default map holds it");
    let (mut large, _) =
        starling_store::open_with(&root.path().join("large"), &StoreOptions::default())?;
    for first in (0..256).step_by(16) {
        large
            .blocking_append((first..first + 16).map(|index| entry(index, 4096)))
            .await?;
    }
    Ok(())
}
