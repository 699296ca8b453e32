//! `contrast-crictl`: the crictl workflow against containerd's CRI socket.
//!
//! ```text
//! contrast-crictl -r /run/containerd/containerd.sock runp NAME HANDLER
//! contrast-crictl -r SOCK run POD_NAME HANDLER CONTAINER IMAGE CMD...   (pod + container)
//! contrast-crictl -r SOCK exec CONTAINER_ID CMD...
//! contrast-crictl -r SOCK pods
//! contrast-crictl -r SOCK rmp POD_ID
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use contrast_cri_client::CriClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = PathBuf::from("/run/containerd/containerd.sock");
    if args.first().map(String::as_str) == Some("-r") {
        socket = PathBuf::from(args.get(1).context("-r needs a socket path")?);
        args.drain(..2);
    }
    let mut cri = CriClient::connect(&socket).await?;
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("runp") if rest.len() == 2 => {
            let pod = cri.run_pod(rest[0], "default", rest[1], HashMap::new()).await?;
            println!("{}", pod.id);
        }
        Some("run") if rest.len() >= 5 => {
            let pod = cri.run_pod(rest[0], "default", rest[1], HashMap::new()).await?;
            let id = cri.run_container(&pod, rest[2], rest[3], &rest[4..]).await?;
            println!("pod {}\ncontainer {id}", pod.id);
        }
        Some("exec") if rest.len() >= 2 => {
            let (code, out, err) = cri.exec_sync(rest[0], &rest[1..]).await?;
            print!("{}", String::from_utf8_lossy(&out));
            eprint!("{}", String::from_utf8_lossy(&err));
            std::process::exit(code);
        }
        Some("pods") => {
            for (id, name, state) in cri.pods().await? {
                println!("{id}  {name}  {state}");
            }
        }
        Some("rmp") if rest.len() == 1 => cri.remove_pod(rest[0]).await?,
        _ => bail!("usage: contrast-crictl [-r SOCKET] runp NAME HANDLER | run POD HANDLER NAME IMAGE CMD... | exec ID CMD... | pods | rmp POD_ID"),
    }
    Ok(())
}
