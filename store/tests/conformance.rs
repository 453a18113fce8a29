//! openraft's own storage conformance suite, run against the LMDB store.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use starling_store::{LogStore, NodeId, StateMachine, TypeConfig};

/// Builds a fresh store in a new temporary directory for each suite case.
struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|error| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                error,
            )
        })?;
        let (log_store, state_machine) = starling_store::open(dir.path()).map_err(|error| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                std::io::Error::other(error),
            )
        })?;
        Ok((dir, log_store, state_machine))
    }
}

/// Goal: the heed store meets every storage guarantee openraft relies on.
/// Method: openraft's `Suite::test_all`, each case on a fresh LMDB directory.
#[test]
fn openraft_storage_suite() -> Result<(), Box<StorageError<NodeId>>> {
    Suite::test_all(TempStoreBuilder).map_err(Box::new)
}
