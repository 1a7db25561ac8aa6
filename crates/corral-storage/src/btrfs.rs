//! The `btrfs` driver (being written).
