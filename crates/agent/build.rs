//! `make agent` links the agent's hot functions first (packaging/agent-hot-symbols.txt, a
//! linker argument cargo does not track): a new list must relink the agent.
fn main() {
    println!("cargo:rerun-if-changed=../../packaging/agent-hot-symbols.txt");
}
