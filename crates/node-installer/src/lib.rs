//! The node installer's containerd config edit, as a library for its binary and for the
//! fuzz target `containerd_config` (fuzz/).

pub mod containerd_config;
