//! What statemirror knows about Apache NiFi's component state: where it lives in each backend
//! ([`layout`]) and how it is encoded ([`state`]). See `shared/reference/nifi-state-backends.md`.

pub mod flow;
pub mod identity;
pub mod identity_cli;
pub mod identity_live;
pub mod identity_wire;
pub mod layout;
pub mod mutf8;
pub mod state;

pub use state::{
    decode_binary, decode_binary_strict, decode_json, diff, encode_binary, encode_json,
    encode_state_binary, NifiDiff, NifiState, TooLong,
};
