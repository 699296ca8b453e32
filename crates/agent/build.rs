//! `make agent` links the agent's and the runner's hot functions first
//! (packaging/{agent,runner}-hot-symbols.txt, linker arguments cargo does not track): a new
//! list must relink them.
fn main() {
    println!("cargo:rerun-if-changed=../../packaging/agent-hot-symbols.txt");
    println!("cargo:rerun-if-changed=../../packaging/runner-hot-symbols.txt");
}
