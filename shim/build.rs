//! `make shim` links the daemon's hot functions first (packaging/shim-hot-symbols.txt, a
//! linker argument cargo does not track): a new list must relink the shim.
fn main() {
    println!("cargo:rerun-if-changed=../packaging/shim-hot-symbols.txt");
}
