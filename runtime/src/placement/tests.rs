use super::*;

/// A request with nothing set.
pub(crate) fn plain_request() -> PlacementRequest {
    PlacementRequest::default()
}
