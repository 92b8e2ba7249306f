//! Reading nodes for resync and verify (TODO: being written).
