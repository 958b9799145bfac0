//! `securemem`: command-line tools for securememory.

fn main() {}
