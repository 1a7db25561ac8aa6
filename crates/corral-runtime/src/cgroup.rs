//! cgroups v1 (hybrid) and v2: placeholder, being written.
