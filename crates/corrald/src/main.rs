//! corrald: the Corral daemon.
fn main() {}
