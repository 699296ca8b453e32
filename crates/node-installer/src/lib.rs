//! The node installer's containerd config edit (also for the fuzz target `containerd_config`,
//! fuzz/) and the RuntimeClass overhead (also for `make bench`), as a library for its binary.

pub mod containerd_config;
pub mod overhead;
