//! `securemem`: proves from outside the process what `securememory` promises, and tells a user
//! what their machine guarantees (`securemem doctor`).
//!
//! The pieces are shared by the `securemem` binary and its test suite, so a promise is checked
//! by one implementation only:
//!
//! - [`holder`]: the program (the hidden `securemem holder` subcommand) that keeps a secret
//!   holding a random marker and obeys commands;
//! - [`spawn`]: the probe's side of a holder — start it, talk to it, wait for it, with timeouts;
//! - [`probe`]: one attack per promise, each returning a [`probe::Finding`];
//! - [`machine`]: what the running machine offers (kernel, limits, dump settings);
//! - [`limits`]: whose locked-memory limit the holders run under (the caller's or `--memlock`);
//! - [`doctor`]: runs everything and renders the report, plain or JSON.

#![cfg(target_os = "linux")]

pub mod doctor;
pub mod holder;
pub mod limits;
pub mod machine;
pub mod probe;
pub mod spawn;
pub mod sys;
