//! What a follower's error code for a mirrored write means: try again later, or never
//! (the same rule as `redis::refusal`: nothing may wedge the mirror).
//!
//! One refusal has no error code: a ZooKeeper server closes the connection on a request
//! larger than its `jute.maxbuffer` ("Len error" in its log). The writer tells that apart
//! from an outage by retrying the batch one request at a time: a follower that accepts a
//! new session and then drops the connection on the same request [`STRIKES`] times in a
//! row is refusing that request (see `mirror::ZkApplier`).

use super::proto::err;

/// How the follower's error for one item is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Transient,
    /// Skip the item; the label is the metric's `reason`.
    Permanent(&'static str),
}

/// Times the follower may drop the connection on the same request before it is skipped.
pub const STRIKES: u32 = 3;

pub fn classify(code: i32) -> Refusal {
    match code {
        err::CONNECTION_LOSS
        | err::OPERATION_TIMEOUT
        | err::SESSION_EXPIRED
        | err::SESSION_MOVED
        | err::NOT_READ_ONLY
        | err::RECONFIG_IN_PROGRESS
        | err::NEW_CONFIG_NO_QUORUM
        | err::THROTTLED_OP
        | err::REQUEST_TIMEOUT => Refusal::Transient,
        err::BAD_ARGUMENTS => Refusal::Permanent("bad_arguments"),
        err::UNIMPLEMENTED => Refusal::Permanent("unimplemented"),
        err::MARSHALLING_ERROR => Refusal::Permanent("marshalling"),
        err::INVALID_ACL | err::NO_AUTH | err::AUTH_FAILED => Refusal::Permanent("auth"),
        err::QUOTA_EXCEEDED => Refusal::Permanent("quota"),
        err::NO_CHILDREN_FOR_EPHEMERALS => Refusal::Permanent("ephemeral_parent"),
        _ => Refusal::Permanent("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_states_are_retried_everything_else_is_skipped() {
        assert_eq!(classify(err::CONNECTION_LOSS), Refusal::Transient);
        assert_eq!(classify(err::NOT_READ_ONLY), Refusal::Transient);
        assert_eq!(classify(err::THROTTLED_OP), Refusal::Transient);
        assert_eq!(
            classify(err::UNIMPLEMENTED),
            Refusal::Permanent("unimplemented")
        );
        assert_eq!(
            classify(err::BAD_ARGUMENTS),
            Refusal::Permanent("bad_arguments")
        );
        assert_eq!(classify(err::INVALID_ACL), Refusal::Permanent("auth"));
    }
}
