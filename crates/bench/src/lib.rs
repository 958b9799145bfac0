//! Benchmarks of securememory against the OS limit and peer libraries.
