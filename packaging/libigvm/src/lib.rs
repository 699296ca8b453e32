//! Nothing of its own: this package only selects the `igvm` crate with its C API (`igvm-c`),
//! whose `staticlib` scripts/build-qemu-igvm.sh links into QEMU.
