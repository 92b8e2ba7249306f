//! What a follower's error reply to a mirrored write means: try again later, or never.
//!
//! Every refusal must be one or the other, or the mirror wedges: a batch retried forever
//! with one write the follower will never take holds back every acknowledged write behind
//! it until the queue overflows. Transient errors are states of the follower that pass
//! (loading a dataset, a busy script, a failover in progress, a replica not yet promoted);
//! the batch is retried as a whole. Anything else is permanent for that one write: it is
//! skipped, counted in `statemirror_mirror_refused_total{reason}`, the follower is marked
//! out of sync naming the key, and the rest of the batch counts as applied.

/// How the follower's error for one op is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Retry the batch (with backoff).
    Transient,
    /// Skip the op; the label is the metric's `reason`.
    Permanent(&'static str),
}

/// Classifies one error reply (`-PREFIX message`, without the dash).
pub fn classify(error: &str) -> Refusal {
    let prefix = error.split_ascii_whitespace().next().unwrap_or("");
    match prefix {
        // Passing states: a dataset loading, a script running, a cluster slot moving, a
        // replica waiting for its master, a replica (Sentinel failover not finished).
        "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY"
        | "NOREPLICAS" | "MISCONF" => Refusal::Transient,
        "NOPERM" => Refusal::Permanent("noperm"),
        "OOM" => Refusal::Permanent("oom"),
        "WRONGTYPE" => Refusal::Permanent("wrongtype"),
        "EXECABORT" => Refusal::Permanent("execabort"),
        _ => {
            let lower = error.to_ascii_lowercase();
            if lower.contains("db index is out of range") || lower.contains("invalid db index") {
                Refusal::Permanent("db_out_of_range")
            } else if lower.contains("unknown command") {
                Refusal::Permanent("unknown_command")
            } else if lower.contains("already exists") {
                Refusal::Permanent("exists")
            } else {
                Refusal::Permanent("other")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_states_are_retried_everything_else_is_skipped() {
        for t in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "MASTERDOWN Link with MASTER is down",
            "READONLY You can't write against a read only replica.",
        ] {
            assert_eq!(classify(t), Refusal::Transient, "{t}");
        }
        assert_eq!(
            classify("ERR DB index is out of range"),
            Refusal::Permanent("db_out_of_range")
        );
        assert_eq!(
            classify("NOPERM User u has no permissions to access the 'k' key"),
            Refusal::Permanent("noperm")
        );
        assert_eq!(
            classify("ERR Library 'lib' already exists"),
            Refusal::Permanent("exists")
        );
        assert_eq!(
            classify("OOM command not allowed when used memory > 'maxmemory'."),
            Refusal::Permanent("oom")
        );
        assert_eq!(classify("ERR syntax error"), Refusal::Permanent("other"));
    }
}
