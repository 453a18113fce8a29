//! openraft's own storage conformance suite, run against the store (segment files and LMDB).

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use starling_store::{LogStore, StateMachine, TypeConfig};

/// Builds a fresh store in a new temporary directory for each suite case.
struct TempStoreBuilder;

fn store_error(error: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::from_io_error(
        openraft::ErrorSubject::Store,
        openraft::ErrorVerb::Write,
        error,
    )
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(store_error)?;
        let (log_store, state_machine) = starling_store::open(dir.path())
            .map_err(|error| store_error(std::io::Error::other(error)))?;
        Ok((dir, log_store, state_machine))
    }
}

/// Goal: the heed store meets every storage guarantee openraft relies on.
/// Method: openraft's `Suite::test_all`, each case on a fresh directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), Box<StorageError<TypeConfig>>> {
    Suite::test_all(TempStoreBuilder).await.map_err(Box::new)
}
