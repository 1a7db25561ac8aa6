//! seccomp deny list and syscall interception: placeholder, being written.
